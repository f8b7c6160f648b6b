"""``mrtoct bench quality``: the papers' comparison of the five CycleGAN variants, reproduced on digital phantoms.

Yang et al. 2018 (Fig. 4, 5) compare the conventional CycleGAN (``cyclegan``), CycleGAN with position-based selection
(``cyclegan-pbs``), the CycleGAN on paired data (``paired``) and the structure-constrained CycleGAN (``yang2018``) by
MAE, PSNR, SSIM and SSIM(HG) on 15 test subjects with paired t-tests against ``cyclegan``; Hiasa et al. 2018 show that
the gradient-consistency loss (``hiasa2018``) raises the mutual information (MI) between MR and synthetic CT.

Two controls isolate effects the papers' variants confound: ``cyclegan-cycle3`` (cyclegan with hiasa2018's
lambda_cycle 3: hiasa2018 vs it isolates the GC loss) and ``supervised`` (L1 to the registered CT only, no GAN: the
upper bound of what the generator learns from the data). Every table also shows baselines (``baselines``: a constant,
an MR-intensity lookup fitted on the training pairs, and the class-mean floor of perfect labels), and each model's MAE
as a fraction of the constant's. ``--data FOLDER`` replaces the phantoms by real paired subjects (one folder per
subject with mr, ct and an optional mask, the SynthRAD layout).

What the command does, per anatomy (head: Yang's sagittal setting; pelvis: Hiasa's coronal setting):

1. writes paired phantom subjects for training (``<out>/data/<anatomy>/train``) and different, held-out subjects for
   testing (``<out>/data/<anatomy>/test``; other dataset seeds);
2. measures seconds per training iteration of every variant (a few warm-up steps, then a few timed ones) and the cost
   of evaluating one subject, chooses the number of iterations so that everything fits the budget (or takes
   ``--iterations``), and prints the plan with its estimated time before any training starts;
3. trains every variant with the SAME data setting (plane, canvas, pixel spacing, intensity windows), network size,
   iterations and seed(s); only the loss weights and the slice sampling of the presets differ. Runs live in
   ``<out>/runs/<anatomy>/<variant>-seed<S>`` (config, losses.csv, loss_curves.png, preview.png, the model);
4. synthesizes every test subject with every model and scores it in the CT body mask (``metrics.evaluate``, data range
   4500 HU as Yang) plus MI(MR, sCT) (Hiasa), then writes CSV/JSON tables (per subject, mean +- SD, paired t-tests),
   Yang-style box plots (Fig. 4), representative slices with difference images (Fig. 5), the sCTs of the real head MR
   scans (``--real-data``; read only), and a Markdown report whose "Reading" section is generated from the numbers.

The command is resumable: a run whose model exists is skipped, a run with a checkpoint is continued, and the plan
(iterations) of the first invocation in ``--out`` is reused. The default setting is 2 mm phantoms on 128-pixel canvases
with ngf 32; ``--small`` is a quick 4 mm CPU check (degenerate for a GAN); ``--paper-scale`` switches to the papers'
sizes (Yang 384x256 canvas, ngf 64, 9 residual blocks, 2e5 iterations) for a GPU. ``--tiny`` (hidden) is for the
smoke test.

Modules: ``settings`` (variants, metrics, data settings, options), ``data`` (phantoms, --data subjects),
``baselines`` (reference predictors), ``convergence`` (validation curves), ``evaluation`` (scoring),
``statistics`` (t-tests, summaries), ``figures``, ``real_scans``, ``plan`` (timing, plan, job status), ``run`` (the
whole benchmark), ``reading`` and ``report`` (the Markdown report), ``command_line`` (``mrtoct bench quality``),
``machine``, ``output`` and ``formatting`` (small shared helpers).
"""
from .command_line import add_quality_arguments, options_from_args, run_quality_from_args
from ..baselines import BASELINES, Baselines, evaluation_mask, fit_baselines
from .convergence import convergence, validation_curve
from .data import (Subject, data_subjects, link_data, paired_files, split_subjects, subject_seeds_of, test_phantoms,
                   write_data, written_subjects)
from .evaluation import evaluate_baselines, evaluate_run, mean_mae_beside_baselines, score_prediction, score_subject
from .plots import VARIANT_COLORS, box_plots, mid_slice, representative_figure, validation_figure
from .machine import machine_description
from .plan import choose_iterations, job_dir, job_status, make_plan, measure, plan_key, print_plan
from .reading import reading
from .real_scans import apply_to_real, real_scan_paths
from .report import write_report
from .run import run_quality
from .settings import (ANATOMIES, BASELINE, BONE_HU, CT_WINDOW_YANG, DATA_RANGE_HU, DEFAULT_REAL_DATA, EFFECTS,
                       EXTRA_COLUMNS, VARIANT_PRESETS, preset_of,
                       METRIC_INFO, METRICS, MR_PERCENTILE_VALUE_YANG, MR_WINDOW_YANG, NETWORKS, PAPER_ITERATIONS, PLAN,
                       REAL_SCANS, SATURATED_HU, SATURATED_SHARE, SETTINGS, TEST_DATA_SEED, TEST_METRICS,
                       TRAIN_DATA_SEED, UNITS, VARIANTS, YANG_METRICS, Network, Options, Setting, overrides_of,
                       training_config)
from .statistics import comparisons, paired_ttest, seed_spread, subject_means, summary_rows, ttest_rows
