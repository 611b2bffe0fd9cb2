"""Attacks: threat models (threats.py), objectives, PGD (pgd.py) and Carlini-Wagner L2 (cw.py)."""

from advfeat.attacks.cw import CWResult, cw_l2
from advfeat.attacks.objectives import CustomObjective, MatchFeatures, Misclassify, Objective, ReachTarget
from advfeat.attacks.forward import frozen, frozen_view
from advfeat.attacks.pgd import AttackResult, pgd, training_attack
from advfeat.attacks.threats import L2Threat, LinfThreat, ThreatModel, make_threat

__all__ = [
    "AttackResult", "CWResult", "CustomObjective", "L2Threat", "LinfThreat", "MatchFeatures", "Misclassify",
    "Objective", "ReachTarget", "ThreatModel", "cw_l2", "frozen", "frozen_view", "make_threat", "pgd",
    "training_attack",
]
