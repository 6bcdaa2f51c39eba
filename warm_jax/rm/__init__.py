"""Reward models: the linear probe on the frozen SFT backbone, the member sweep (one job per
member, or every member in one vmapped program), batched reward scoring, and the RM evaluation
stage (accuracy per subset, WARM vs ENS, LMC, accuracy vs M).

Where it sits: after SFT and the RM data, before averaging (`warm_jax.merging`) and the policy
side (`warm_jax.policy`).
"""
