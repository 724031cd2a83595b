r"""Fit several inference methods on one dataset and compare them side by side.

:func:`compare` is the library function behind ``pyrobdl compare``: it loads a
dataset (a named one, a digits OOD variant, or any CSV file), builds one
network per task, fits every requested method on every requested split with
:func:`pyrobdl.fit`, evaluates the posterior predictive with
:mod:`pyrobdl.metrics`, and writes ``results.json``, ``report.md``,
``report.html`` and the PNGs (:mod:`pyrobdl.compare.report`) into ``out``.

The package's modules: :mod:`~pyrobdl.compare.profiles` (what the protocol
fixes, as data, and the per-method settings), :mod:`~pyrobdl.compare.evaluation`
(the metrics of one prediction and the JSON form of the results),
:mod:`~pyrobdl.compare.runner` (the run) and :mod:`~pyrobdl.compare.report`
(the report). The measurements behind every default are on the docs page
"How the defaults were chosen".

**Model per task** (:func:`build_model`).

* regression: ``Linear(d, H) → ReLU → Linear(H, 1)`` with
  :class:`~pyrobdl.likelihoods.Gaussian` (homoscedastic noise, learned). On
  regression data other than the 1-D toys, a method whose class declares
  ``variance_head = True`` (:attr:`pyrobdl.inference.Inference.variance_head`)
  fits ``Linear(d, H) → ReLU → Linear(H, 2)`` with
  :class:`~pyrobdl.likelihoods.HeteroscedasticGaussian` (a mean and a
  log-variance per input) instead. Each split's record then names the model
  (``record["model"]``) and the report lists it, so the comparison says which
  methods fitted which model. Inputs and targets are standardised with the
  training split for every regression dataset, the 1-D toys included (the UCI
  protocol; metrics are converted back to the target's units). ReLU also on
  the 1-D toys: its piecewise-linear extrapolation is what makes the epistemic
  bands widen outside the training range, and the toy's heteroscedastic noise
  is left to a homoscedastic Gaussian for every method.
* classification: ``Linear(d, H) → ReLU → Linear(H, C)`` with
  :class:`~pyrobdl.likelihoods.Categorical`.
* prior: :class:`~pyrobdl.network.BayesianNetwork`'s default; the 1-D toys'
  short profile uses i.i.d. ``Normal(0, 1)``
  (:data:`~pyrobdl.compare.profiles.TOY_PRIOR`).
* ``H`` = ``hidden`` (default 50, the UCI protocol's width; a UCI dataset's
  own ``n_hidden.txt`` -- 100 for protein -- when ``hidden`` is not given;
  20 with ``quick``).

**Per-method settings.** Each method runs with its class defaults (the library
defaults), changed only by the profile in force --
:data:`~pyrobdl.compare.profiles.TOY_OPTIONS` on the 1-D toys
(``toy-regression`` and ``sinusoid``), :data:`~pyrobdl.compare.profiles.QUICK_OPTIONS`
with ``quick=True`` -- and finally by the user's ``config`` (a mapping
``method -> options``, from a dict or a YAML/JSON file);
:func:`method_options` merges them. Profile settings that a method does not
accept are dropped; user settings are checked and an unknown option is an
error. ``progress=False`` and ``seed`` are passed to every method that accepts
them. ``results.json`` records every setting each method ran with.

**Methods.** ``methods=None`` runs every registered method
(:func:`pyrobdl.inference.methods`, in registration order) that fits the
problem: a method class may declare ``max_weights``, the largest network
(Bayesian weights) it runs on by default. Methods named explicitly always run.

**Metrics** (per split; mean and standard error across splits;
:data:`~pyrobdl.compare.evaluation.METRICS`):

* regression, in the target's original units: ``rmse``; ``ll`` (mean test log
  predictive density, :meth:`Prediction.log_prob`, plus
  :attr:`Dataset.log_likelihood_offset`) and ``nll = -ll``; ``crps``;
  ``coverage_90`` and ``mean_width_90`` of the central 90% interval;
  ``miscalibration_area``; ``sharpness``; for the 1-D toys, whose test grid
  extends beyond the training range, also ``rmse_in_range`` and
  ``ll_in_range`` on the test points inside it; with OOD inputs (the toys'
  ``x_ood``): ``ood_auroc_std`` and ``ood_auroc_epistemic`` (predictive and
  epistemic std as the score; in-distribution = test points inside the
  training range).
* classification: ``accuracy``, ``nll``, ``brier``, ``ece``, ``mce`` (15
  equal-width bins), ``aurc``; with OOD inputs ``ood_auroc_*``, ``ood_aupr_*``
  and ``fpr95_*`` for ``entropy`` (predictive entropy) and ``mi`` (mutual
  information); with OOD labels (rotated / noisy digits) ``ood_accuracy``.
* both: ``fit_seconds`` and ``predict_seconds`` (one ``predict`` call on the
  test inputs and the OOD inputs together).
* posteriors drawn by Markov chains (a posterior class declaring
  ``markov_chains = True``, e.g. ChEES-HMC, NUTS and HMC): the
  ``pyrobdl.diagnostics.summary`` as plain JSON (function-space R-hat, ESS and
  nested R-hat of the predictions at every test input), plus trace and rank
  plots of the predictions at a few test inputs.
* distance to the reference: when the reference sampler
  (:data:`~pyrobdl.compare.profiles.REFERENCE_METHOD`, ``chees-hmc``) is among
  the methods it runs first, ``results.json`` names it (top-level
  ``"reference"``), and every other method gains, per split, how far its
  predictive on the test inputs is from the reference's
  (:func:`~pyrobdl.compare.evaluation.reference_distances`): ``ref_w2`` (mean
  2-Wasserstein distance between the moment-matched Gaussians, original units)
  and ``ref_kl`` (mean KL from the reference) for regression, ``ref_tv`` (mean
  total variation) and ``ref_agreement`` (top-1 agreement; Izmailov et al.,
  2021) for classification. How far to trust the reference is in its MCMC
  diagnostics.

Small CPU fits (training rows × weights below :data:`~pyrobdl.compare.runner.SMALL_WORK`) run on one
intra-op thread (restored afterwards): faster at that size, and far faster
on a busy machine.

A failing (method, split) is recorded as ``{"status": "failed", "error":
"<type>: <message>"}`` and the run goes on; ``results.json`` is rewritten
after every finished (method, split), so nothing computed is lost.

**The output folder.** One run writes to a folder at a time: a lock file
(:class:`~pyrobdl.compare.runner.FolderLock`, holding the writer's process id)
makes a second run into it fail with a ``ValueError`` naming the first, and a
lock whose process is gone is taken over. A run first removes what an earlier
run wrote there (its ``results.json``, the report and plots that file names,
MCMC plots; :func:`~pyrobdl.compare.runner.clear_previous_outputs`), never
other files. ``results.json`` is written atomically through a per-process
temporary file and says ``"complete"`` only once the report is written too;
an interruption (Ctrl-C) leaves ``"interrupted"``. A folder that cannot be
written is a ``ValueError`` (exit code 2 on the command line).

Example::

    from pyrobdl.compare import compare
    results = compare("toy-regression", methods=["mean-field", "ensemble"], out="report", quick=True)
    results["methods"]["ensemble"]["summary"]["rmse"]["mean"]
"""
from .evaluation import METRICS, evaluate, reference_distances, to_jsonable, to_original_units
from .profiles import QUICK_OPTIONS, REFERENCE_METHOD, TOY_OPTIONS, load_config, method_options
from .runner import SCHEMA_VERSION, SMALL_WORK, build_model, compare, default_methods

__all__ = [
    "compare",
    "TOY_OPTIONS",
    "QUICK_OPTIONS",
    "REFERENCE_METHOD",
    "METRICS",
    "SMALL_WORK",
    "SCHEMA_VERSION",
    "build_model",
    "default_methods",
    "evaluate",
    "load_config",
    "method_options",
    "reference_distances",
    "to_jsonable",
    "to_original_units",
]
