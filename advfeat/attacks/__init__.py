"""Attacks, one per file, each written once against a threat model (threats.py) and, where it
iterates, run by the slot engine (engine.py):

    pgd.py         PGD with restarts (Madry et al. 2018): misclassify, reach a target, match features
    apgd.py        APGD-CE / APGD-DLR and targeted APGD (Croce & Hein 2020)
    square.py      Square Attack, score-based (Andriushchenko et al. 2020)
    fab.py         FAB and targeted FAB-T, minimal L2 / Linf perturbations (Croce & Hein 2020)
    autoattack.py  the AutoAttack ensemble over the attacks above
    cw.py          Carlini-Wagner L2 (2017), minimal distances
"""

from advfeat.attacks.apgd import apgd, apgd_targeted
from advfeat.attacks.autoattack import autoattack
from advfeat.attacks.cw import CWResult, cw_l2
from advfeat.attacks.engine import batched_forward
from advfeat.attacks.fab import FABResult, fab, fab_targeted
from advfeat.attacks.forward import frozen, frozen_view
from advfeat.attacks.objectives import MatchFeatures, Misclassify, Objective, ReachTarget
from advfeat.attacks.pgd import AttackResult, pgd
from advfeat.attacks.results import EnsembleResult
from advfeat.attacks.square import square_attack
from advfeat.attacks.threats import L2Threat, LinfThreat, ThreatModel, make_threat

__all__ = [
    "AttackResult", "CWResult", "EnsembleResult", "FABResult", "L2Threat", "LinfThreat", "MatchFeatures", "Misclassify",
    "Objective", "ReachTarget", "ThreatModel", "apgd", "apgd_targeted", "autoattack", "batched_forward", "cw_l2", "fab",
    "fab_targeted", "frozen", "frozen_view", "make_threat", "pgd", "square_attack",
]
