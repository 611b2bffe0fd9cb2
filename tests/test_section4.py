"""Section 4's theorems judged on the theory stage's numbers: each rule fails when its theorem's
statement is false in the numbers given."""

import copy

import pytest

from advfeat.claims import section4_rules


def gaussian(**changes) -> dict:
    """A gaussian.json in the theory stage's shape where every theorem holds."""
    fit = lambda eps, align, mu=(1.0, 0.2): {"eps": eps, "mu_r": list(mu), "worst_case_alignment": align}  # noqa: E731
    g = {"loss_gap": {"closed_form": 0.628, "monte_carlo": 0.629, "monte_carlo_se": 0.003,
                      "isotropic_same_trace": 0.013, "penalty_C": 300.0},
         "two_dim": {"mu": [1.0, 0.2], "quadrature": [fit(0, 0.2), fit(1, 0.9), fit(4, 0.99)],
                     "closest_closed_form": [{"eps": 1, "max_rel_error": 0.02}]},
         "d_dim": {"mu": [0.0] * 10, "samples": [fit(0, 0.2, [0.0] * 10), fit(4, 0.96, [0.0] * 10)],
                   "closest_closed_form": [{"eps": 4, "max_rel_error": 0.01}]}}
    for path, value in changes.items():
        node = g
        *keys, last = path.split("/")
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        node[int(last) if last.isdigit() else last] = value
    return g


def verdicts(g) -> list[str]:
    return [r["verdict"] for r in section4_rules(copy.deepcopy(g))]


def test_every_theorem_holds_on_numbers_that_satisfy_it():
    assert verdicts(gaussian()) == ["holds"] * 3
    assert "1.256" in section4_rules(gaussian())[0]["value"]  # the paper's form of the gap: twice ours


@pytest.mark.parametrize("change, which", [
    ({"loss_gap/monte_carlo": 0.7}, 0),  # the closed form disagrees with Monte Carlo
    ({"loss_gap/isotropic_same_trace": 0.9}, 0),  # isotropy would give the larger gap
    ({"two_dim/quadrature/1/mu_r": [1.1, 0.2]}, 1),  # the robust MLE moved the mean
    ({"d_dim/closest_closed_form/0/max_rel_error": 0.2}, 1),  # the covariance is not of the closed form's family
    ({"two_dim/quadrature/2/worst_case_alignment": 0.5}, 2),  # alignment falls at a larger eps
])
def test_each_rule_fails_when_its_theorem_is_false_in_the_numbers(change, which):
    v = verdicts(gaussian(**change))
    assert v[which] == "does not hold" and v.count("holds") == 2
