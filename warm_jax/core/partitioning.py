"""Device mesh, logical-axis rules and shardings: how every program is laid out on devices.

Where it sits: each training/eval program builds one `Partitioner` (from gin:
`gin/partitioning/*.gin`) and asks it for the shardings of its state and batches. Model code
names only logical axes (`batch`, `embed`, `mlp`, `heads`, `kv_heads`, `vocab`, ...); the rules
here map them onto the mesh axes `data`, `fsdp` and `tensor`, so one gin line moves a run from
a laptop (everything replicated, batch split over local devices) to a pod (FSDP + tensor
parallel).

A dimension that a mesh axis does not divide (a 2-head model on a 4-way tensor axis, a 1-wide
reward head) is replicated instead of failing; `Partitioner.explain` lists such fall-backs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# t5x-style defaults: batch over data+fsdp, weights' embed dim over fsdp (ZeRO-3), the wide
# dims (mlp, heads, vocab) over tensor. A mesh axis is used at most once per array; flax's
# resolution skips a rule whose mesh axis is taken (so activations' embed stays unsharded).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("members", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("length", None),
)

ENV_DISTRIBUTED = "WARM_JAX_DISTRIBUTED"
ENV_HEARTBEAT_TIMEOUT = "WARM_JAX_HEARTBEAT_TIMEOUT_S"
ENV_SHUTDOWN_TIMEOUT = "WARM_JAX_SHUTDOWN_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
DEFAULT_SHUTDOWN_TIMEOUT_S = 60


def maybe_initialize_distributed(*, enable: bool | None = None,
                                 coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None,
                                 initialization_timeout: int = 300,
                                 heartbeat_timeout_seconds: int | None = None,
                                 shutdown_timeout_seconds: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when asked to by a flag or `WARM_JAX_DISTRIBUTED=1`.

  With no explicit addresses jax auto-detects SLURM, TPU pods and other cluster environments;
  locally, pass coordinator_address="localhost:PORT", num_processes and process_id (or set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). Returns whether it initialised.

  When a process dies, the others learn it at their next collective (a connection reset: the
  CLIs then print what happened and exit with status 1 at once, see `gin_utils.gin_main`), or
  from the coordination service, which reports a lost coordinator at once and a silent
  process once its heartbeats stop for `heartbeat_timeout_seconds` (env
  WARM_JAX_HEARTBEAT_TIMEOUT_S, default 30; jax's own default is 100): jax then terminates
  them with "the JAX distributed service detected fatal errors ... another task died" (jax
  offers no hook to replace that abort). `shutdown_timeout_seconds`
  (WARM_JAX_SHUTDOWN_TIMEOUT_S, default 60) bounds how long a finished process waits for the
  others at exit.
  """
  if enable is None:
    enable = os.environ.get(ENV_DISTRIBUTED, "0").lower() in ("1", "true", "yes")
  if not enable:
    return False
  env = os.environ
  kwargs = dict(
      coordinator_address=coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
      num_processes=num_processes if num_processes is not None else (
          int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None),
      process_id=process_id if process_id is not None else (
          int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None),
      initialization_timeout=initialization_timeout,
      heartbeat_timeout_seconds=heartbeat_timeout_seconds if heartbeat_timeout_seconds
      is not None else int(env.get(ENV_HEARTBEAT_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT_S)),
      shutdown_timeout_seconds=shutdown_timeout_seconds if shutdown_timeout_seconds
      is not None else int(env.get(ENV_SHUTDOWN_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT_S)),
  )
  jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
  logging.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(),
               jax.process_count(), jax.device_count())
  return True


def is_peer_failure(error: BaseException | None) -> bool:
  """Whether `error` is what a process of a multi-process run sees when another process of
  it died: a JaxRuntimeError (a collective's connection reset, a coordination-service barrier
  or heartbeat failure) while `jax.process_count() > 1`. The CLIs then report it in one line
  and exit at once (`gin_utils.gin_main`), and training loops' cleanup enters no barrier
  (`checkpoints.TrainCheckpointer.finish`)."""
  return isinstance(error, jax.errors.JaxRuntimeError) and jax.process_count() > 1


def _resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  shape = {axis: int(mesh_shape.get(axis, 1)) for axis in MESH_AXES}
  unknown = set(mesh_shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh_shape has unknown axes {sorted(unknown)}; the mesh axes are "
                     f"{MESH_AXES}")
  free = [axis for axis, size in shape.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"mesh_shape {dict(mesh_shape)}: at most one axis may be -1 (the rest)")
  fixed = int(np.prod([size for size in shape.values() if size != -1]))
  if any(size == 0 or size < -1 for size in shape.values()):
    raise ValueError(f"mesh_shape {dict(mesh_shape)}: sizes must be positive or -1")
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh_shape {dict(mesh_shape)}: the fixed axes need a multiple of "
                       f"{fixed} devices but {num_devices} are available")
    shape[free[0]] = num_devices // fixed
  total = int(np.prod(list(shape.values())))
  if total != num_devices:
    desc = " x ".join(f"{a}={s}" for a, s in shape.items())
    raise ValueError(
        f"mesh {desc} needs {total} devices but jax has {num_devices} "
        f"({jax.default_backend()}): change the mesh shape in the partitioning gin file, or for "
        f"a CPU test set XLA_FLAGS=--xla_force_host_platform_device_count={total}")
  return shape


@dataclasses.dataclass
class Partitioner:
  """Owns the mesh and the logical-axis rules; turns logical specs into shardings.

  Args:
    mesh_shape: sizes of the mesh axes data/fsdp/tensor; -1 for one axis means "the rest".
    logical_axis_rules: ordered (logical name, mesh axis or tuple or None) pairs.
    devices: devices to use (default: all of jax.devices()).
  """

  mesh_shape: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
  logical_axis_rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
  devices: Sequence[Any] | None = None

  def __post_init__(self):
    devices = list(self.devices) if self.devices is not None else jax.devices()
    shape = _resolve_mesh_shape(self.mesh_shape, len(devices))
    self.resolved_shape = shape
    dims = [shape[a] for a in MESH_AXES]
    try:
      device_array = mesh_utils.create_device_mesh(dims, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
      device_array = np.asarray(devices).reshape(dims)
    self.mesh = Mesh(device_array, MESH_AXES)
    self.logical_axis_rules = tuple((name, tuple(v) if isinstance(v, list) else v)
                                    for name, v in self.logical_axis_rules)
    self.fallbacks: list[str] = []

  # -- specs -------------------------------------------------------------------------------------
  def logical_to_mesh(self, logical_axes: Sequence[str | None]) -> PartitionSpec:
    return nn.logical_to_mesh_axes(tuple(logical_axes), self.logical_axis_rules)

  def _fit(self, spec: PartitionSpec, shape: Sequence[int], where: str) -> PartitionSpec:
    """Replaces mesh axes that do not divide their dimension by None (replicate)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
      if axes is None:
        fitted.append(None)
        continue
      names = axes if isinstance(axes, tuple) else (axes,)
      size = int(np.prod([self.mesh.shape[n] for n in names]))
      if dim % size:
        self.fallbacks.append(f"{where}: dim {dim} not divisible by {names} ({size}); replicated")
        fitted.append(None)
      else:
        fitted.append(axes)
    return PartitionSpec(*fitted)

  def sharding(self, logical_axes: Sequence[str | None], shape: Sequence[int],
               where: str = "array") -> NamedSharding:
    return NamedSharding(self.mesh, self._fit(self.logical_to_mesh(logical_axes), shape, where))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def param_shardings(self, boxed_abstract: Any) -> Any:
    """Shardings for an (abstract) variable tree whose leaves are flax `Partitioned` boxes."""
    logical = nn.get_partition_spec(boxed_abstract)
    unboxed = nn.unbox(boxed_abstract)
    flat_logical = jax.tree_util.tree_leaves(
        logical, is_leaf=lambda x: isinstance(x, PartitionSpec))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(unboxed)
    out = []
    for (path, leaf), spec in zip(leaves, flat_logical, strict=True):
      out.append(self.sharding(tuple(spec), leaf.shape, jax.tree_util.keystr(path)))
    return jax.tree_util.tree_unflatten(treedef, out)

  def batch_sharding(self, ndim: int) -> NamedSharding:
    """Sharding of a batch feature [batch, ...]: the leading dim split over the batch axes."""
    return NamedSharding(self.mesh, self.logical_to_mesh(("batch",) + (None,) * (ndim - 1)))

  def explain(self) -> str:
    desc = " x ".join(f"{a}={s}" for a, s in self.resolved_shape.items())
    lines = [f"mesh {desc} over {self.mesh.devices.size} {jax.default_backend()} devices"]
    lines += [f"  {name} -> {axes}" for name, axes in self.logical_axis_rules]
    lines += [f"  fallback: {f}" for f in self.fallbacks]
    return "\n".join(lines)

  # -- data --------------------------------------------------------------------------------------
  @property
  def batch_divisor(self) -> int:
    """The global batch must be a multiple of this (the product of the batch mesh axes)."""
    spec = self.logical_to_mesh(("batch",))[0]
    names = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    return int(np.prod([self.mesh.shape[n] for n in names]))

  def shard_batch(self, host_batch: Mapping[str, np.ndarray], global_batch_size: int
                  ) -> dict[str, jax.Array]:
    """Host-local numpy slices -> global jax arrays sharded over the batch axes.

    Each process passes the rows it owns (global_batch_size / process_count of them).
    """
    out = {}
    for name, local in host_batch.items():
      global_shape = (global_batch_size,) + tuple(local.shape[1:])
      out[name] = jax.make_array_from_process_local_data(
          self.batch_sharding(local.ndim), np.asarray(local), global_shape)
    return out

  def activation_rules(self):
    """Context (valid inside jit) in which `nn.with_logical_constraint` uses these rules."""
    return nn.logical_axis_rules(self.logical_axis_rules)

  def mesh_context(self):
    """Context (outside jit) that makes this mesh the one traced programs constrain against."""
    return jax.set_mesh(self.mesh)


def opt_state_shardings(abstract_opt_state: Any, abstract_params: Any, param_shardings: Any,
                        replicated: NamedSharding) -> Any:
  """Shardings for any optax state: a leaf shaped like the parameter it tracks gets that
  parameter's sharding; anything else (Adafactor's factored row/column statistics, counters)
  is small and replicated.

  The parameter a state leaf tracks is found by the longest suffix of the leaf's tree path that
  is a parameter path (optax states nest a params-shaped tree under their own fields).
  """
  by_path = {}
  for (path, leaf), sharding in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0],
      jax.tree_util.tree_leaves(param_shardings), strict=True):
    by_path[tuple(path)] = (leaf.shape, sharding)

  def pick(path, leaf):
    path = tuple(path)
    for start in range(len(path)):
      match = by_path.get(path[start:])
      if match is not None:
        shape, sharding = match
        return sharding if tuple(leaf.shape) == tuple(shape) else replicated
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)
