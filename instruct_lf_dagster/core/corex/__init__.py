"""Linear CorEx in PyTorch: m linear factors that explain the correlations between property columns.

Linear CorEx (Ver Steeg & Galstyan, arXiv 1706.03353) models factors z = W x + eps_z (eps_z standard normal) on
standardised columns x and minimises an upper bound on TC(X | Z) (Instruct-LF adds an L1 penalty):

    0.5 * sum_i log mean (x_i - E[x_i|z])^2 + 0.5 * sum_j log mean z_j^2  (+ l1 * sum |W|)

with R = <z x> / sqrt(<z^2>), r_i = sum_j R_ji^2 / (1 - R_ji^2), E[x|z] = z (R / (1 - R^2) / sqrt(<z^2>)) / (1 + r).

Two optimisers minimise the same objective. `adam` is the research scripts' path: Adam on the noisy forward pass
(a sampled eps_z per step). `lbfgs` minimises the noise-free objective, a smooth deterministic function, with a
limited-memory quasi-Newton method that treats the L1 term orthant-wise (OWL-QN, Andrew & Gao 2007): on the
planted benchmark it reaches the reference package's objective in about 65 steps, where Adam at lr 1e-3 needs
about 1,000. With an L1 penalty it finds the penalised optimum, exact zeros included, and at the paper's l1 = 0.9
that optimum is often W = 0 on a small corpus (too little total correlation to pay for any weight): W = 0 is a
stationary point for every l1 > 0. The scripts' Adam never gets there, and the paper's results rest on that. So
`auto` (the default) uses `lbfgs` without L1 and `adam` with it.

`lbfgs` sees the data only through n and the covariance of the standardised columns, so it can also fit from
`CorexStatistics` accumulated batch by batch (`LinearCorex.fit_statistics`), never holding all the rows.

Modules, each importing only ones listed before it: `objective` (the objective, its gradient, the moments, the
`_Data` view of x or its covariance), `quasi_newton` (the `lbfgs` optimiser), `adam` (the `adam` optimiser),
`statistics` (`CorexStatistics`) and `estimator` (`LinearCorex`, `fit_hierarchy`).
"""

from instruct_lf_dagster.core.corex.adam import ANNEAL_STEPS, WINDOW
from instruct_lf_dagster.core.corex.estimator import ANNEAL, OPTIMIZERS, LinearCorex, fit_hierarchy
from instruct_lf_dagster.core.corex.objective import _Data, _objective, objective
from instruct_lf_dagster.core.corex.quasi_newton import ANNEAL_QN_STEPS, MEMORY, QN_WINDOW
from instruct_lf_dagster.core.corex.statistics import CorexStatistics

__all__ = [
    "ANNEAL",
    "ANNEAL_QN_STEPS",
    "ANNEAL_STEPS",
    "MEMORY",
    "OPTIMIZERS",
    "QN_WINDOW",
    "WINDOW",
    "CorexStatistics",
    "LinearCorex",
    "_Data",  # private, imported by the tests
    "_objective",  # private, imported by the tests
    "fit_hierarchy",
    "objective",
]
