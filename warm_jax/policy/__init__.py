"""The policy side: KV-cache sampling, the oracle, reward sources (a member, WARM, ENS, WCO,
UWO), best-of-N, RL (`policy.rl`: REINFORCE + value baseline + KL), win rates, the members'
disagreement, Gao et al.'s fits, and the two stages that turn policy samples into preference
data (`on_policy`: the RMs' training and validation pairs; `policy_pairs`: OOD pairs).

Where it sits: after SFT (the policy-sample data) and after the RMs (best-of-N, RL, win rates).
"""
