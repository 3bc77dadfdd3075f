"""The ``fond`` command line: a thin layer over the library.

    fond train --model ipvae --data natural16 --preset quick --out runs/quick
    fond train --model igvae-relu --decoder mlp --data natural16 --preset quick --out runs/igrelu-mlp
    fond eval runs/quick [--data SPEC] [--steps 1000] [--json]
    fond compare runs/quick runs/quick-igvae-relu runs/quick-igvae     # side-by-side Markdown table
    fond sweep --models ipvae igvae-relu --beta 8 24 --t-train 8 16 --seeds 0 1 --out runs/sweep
    fond analyze gabor runs/quick --out runs/quick/analysis            # also frontier, classify, ood, ...
    fond reproduce --preset quick --out runs/reproduce                 # the paper's tables and figures
    fond pretrained list                                               # the reference models that ship
    fond eval pretrained:ipvae-natural16                               # pretrained:NAME wherever a run goes
    fond export nir pretrained:ipvae-natural16 natural16.nir           # the iP-VAE as a NIR graph (neuromorphic)
    fond quantize pretrained:ipvae-natural16 --weight-bits 8 --state-bits 16   # an integer iP-VAE (fixed point)

User errors (bad data, bad config, bad checkpoint) print one line, ``fond: error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from fond.device import DEVICE_HELP
from fond.errors import FondError
from fond.run import RunFolder
from fond.validate import finite_float, positive_int

DECODER_CHOICES = ("linear", "mlp", "conv")
ENCODER_CHOICES = ("linear", "linear-nobias", "mlp", "conv")


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true/false, strings otherwise)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _argument(text: str, parse, expected: str, check, rule: str):
    """An argparse type: ``parse(text)`` (else "expected <expected>"), then ``check`` — one of fond.validate's
    checks, the library's own — on the value (else "<rule>, got <text>")."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    try:
        return check(value)
    except FondError:
        raise argparse.ArgumentTypeError(f"{rule}, got {text}") from None


def _positive_int(text: str) -> int:
    return _argument(text, int, "an integer", lambda value: positive_int(value, "value"), "must be ≥ 1")


def _step_list(text: str) -> list[int]:
    steps = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not steps:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps, got {text!r}")
    return steps


def _nonneg_float(text: str) -> float:
    return _argument(text, float, "a number", lambda value: finite_float(value, "value", minimum=0.0),
                     "must be a finite number ≥ 0")


def _model_name(text: str) -> str:
    """A model name the registry knows (built-in, registered family or plug-in); else one line listing them."""
    from fond.registry import model_names, model_spec

    try:
        return model_spec(text).name
    except FondError:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(model_names())})") from None


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line: ``fond: error: ...`` (exit 2)."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"fond: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from fond.config import PAPER_DATA, PRESETS
    from fond.pretrained import DIRECTORY_ENV
    from fond.registry import models_by_kind

    parser = _Parser(prog="fond", description="Brain-like variational inference (FOND).")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (dotted name or .py file) first: a plug-in registering families or "
                             "models; repeatable (also FOND_PLUGINS=MOD,... and entry points 'fond.plugins')")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tr = sub.add_parser("train", help="train a model, evaluate it at 1000 steps and write its report")
    tr.add_argument("--model", default="ipvae", type=_model_name,
                    help=f"{models_by_kind()}; or a registered family or plug-in model (see --plugin)")
    tr.add_argument("--decoder", default="linear", choices=DECODER_CHOICES,
                    help="linear dictionary, or a nonlinear decoder (pull-back by vector-Jacobian product)")
    tr.add_argument("--decoder-hidden", type=_positive_int, default=512,
                    help="hidden units (mlp) or channels (conv) of a nonlinear decoder")
    tr.add_argument("--encoder", choices=ENCODER_CHOICES,
                    help="encoder of amortized/hybrid models (default: the preset's, else mlp)")
    tr.add_argument("--encoder-hidden", type=_positive_int, default=512)
    tr.add_argument("--sparsity", type=_nonneg_float, help="λ of lca/ista/fista (method option 'sparsity')")
    tr.add_argument("--family-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the distribution family (e.g. clamp_final=6, indicator=cubic)")
    tr.add_argument("--method-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                    help="an option of a baseline method (e.g. sparsity=0.3, refine_steps=16)")
    tr.add_argument("--data", default="natural16",
                    help="natural16 (bundled photos; natural16-lcn: contrast-normalised as the authors'), mnist "
                         "(bundled digits; mnist-raw-60k: the authors' 60k raw digits), a .npy file of patches "
                         "(N×D) or a folder of images")
    tr.add_argument("--preset", default="quick", choices=PRESETS,
                    help="quick: minutes on 2 CPU cores; paper: the authors' recipe (hours; with --data "
                         f"{PAPER_DATA['natural']} or {PAPER_DATA['mnist']}); fond: the paper's schedule with fond's "
                         "own choices (see docs/models.md)")
    tr.add_argument("--out", type=Path,
                    help="run directory (resumed if it holds a checkpoint of the same configuration)")
    tr.add_argument("--resume", type=Path, metavar="DIR",
                    help="finish the interrupted run in DIR with the configuration stored in its checkpoint "
                         "(instead of --out and the options that set the configuration)")
    tr.add_argument("--config", type=Path, help="JSON file of TrainConfig overrides")
    tr.add_argument("--latents", type=_positive_int,
                    help="K, number of neurons (default: the preset's, 512 where the model's preset sets none)")
    tr.add_argument("--beta", type=_nonneg_float, help="KL weight β (default: the preset's)")
    tr.add_argument("--steps", type=_positive_int, help="T_train, unrolled inference steps")
    tr.add_argument("--iterations", type=_positive_int, help="parameter updates (default: the preset's)")
    tr.add_argument("--batch-size", type=_positive_int)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--eval-steps", type=_positive_int, default=1000, help="T_test of the final evaluation")
    tr.add_argument("--no-eval", action="store_true", help="skip the final evaluation and report")
    tr.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("eval", help="evaluate a trained model over T_test inference steps")
    ev.add_argument("run", type=Path, help="run or model directory, or pretrained:NAME (fond pretrained list)")
    ev.add_argument("--data", help="evaluate on this data instead of the run's validation split: every row of a "
                                   ".npy file, patches from every image of a folder, a named set's held-out split")
    ev.add_argument("--images", type=Path, nargs="+", metavar="PATH",
                    help="evaluate on your own images (files or folders), made into inputs exactly as the run's "
                         "training inputs were (whitened patches, MNIST digits: the run's recorded preprocessing)")
    ev.add_argument("--split-file", action="store_true",
                    help="with --data FILE.npy or FOLDER: evaluate only the part a training run would hold out "
                         "(10 %% of the rows, the last 15 %% of the images), as before")
    ev.add_argument("--steps", type=_positive_int, default=1000)
    ev.add_argument("--samples", type=_positive_int, help="evaluate on the first N inputs only (default: all of "
                                                          "the run's split; with --data, a test set's whole split "
                                                          "(10k MNIST digits) or 5000 sampled inputs)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--until-converged", type=_nonneg_float, metavar="TOL",
                    help="anytime inference: freeze each input once its mean code has settled within TOL "
                         "(relative change of its mean over two windows of --window steps; e.g. 0.02) and stop "
                         "a batch when all have; prints the steps used (the run's report is not rewritten)")
    ev.add_argument("--window", type=_positive_int, default=50, help="window of --until-converged (steps)")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev.add_argument("--no-report", action="store_true", help="do not (re)write DIR/report")
    ev.add_argument("--out", type=Path, help="write report/ in this folder instead of DIR (default for "
                                             "pretrained:NAME: runs/pretrained-NAME)")

    en = sub.add_parser("encode", help="write a model's codes (spike counts, rates, reconstructions) of a data "
                                       "set to a .npz file, for analysis elsewhere")
    en.add_argument("run", type=Path, help="run or model directory, or pretrained:NAME")
    en.add_argument("--data", help="data to encode (as fond eval --data: every row of a .npy file, patches from "
                                   "every image of a folder, a named set's held-out split); default: the run's "
                                   "validation split")
    en.add_argument("--images", type=Path, nargs="+", metavar="PATH",
                    help="encode your own images (files or folders) through the run's recorded preprocessing")
    en.add_argument("--out", required=True, type=Path, help="the .npz file to write")
    en.add_argument("--steps", type=_positive_int, default=1000, help="inference steps (codes at t = steps)")
    en.add_argument("--what", default="spikes,rates",
                    help="comma-separated arrays to write: spikes, rates, reconstruction (default: spikes,rates)")
    en.add_argument("--record", type=_step_list, help="comma-separated steps whose spikes and rates to keep too "
                                                      "(e.g. 1,10,100): arrays (S, N, K) and steps (S,)")
    en.add_argument("--samples", type=_positive_int, help="encode the first N inputs only")
    en.add_argument("--split-file", action="store_true", help="as fond eval --split-file")
    en.add_argument("--seed", type=int, default=0)
    en.add_argument("--chunk", type=_positive_int, default=1000, help="inputs per rollout (bounds the memory)")
    en.add_argument("--no-progress", action="store_true")

    sw = sub.add_parser("sweep", help="train and evaluate a grid of models × β × T_train × seeds (resumable)")
    sw.add_argument("config", type=Path, nargs="?",
                    help="JSON or YAML (.yaml/.yml) file of a SweepConfig (flags override its fields)")
    sw.add_argument("--out", required=True, type=Path, help="sweep directory: one run folder per grid point")
    sw.add_argument("--models", nargs="+", type=_model_name, metavar="MODEL")
    sw.add_argument("--beta", nargs="+", type=_nonneg_float, dest="betas", metavar="BETA")
    sw.add_argument("--t-train", nargs="+", type=_positive_int, metavar="T")
    sw.add_argument("--seeds", nargs="+", type=int, metavar="SEED")
    sw.add_argument("--data")
    sw.add_argument("--preset", choices=PRESETS)
    sw.add_argument("--iterations", type=_positive_int)
    sw.add_argument("--batch-size", type=_positive_int)
    sw.add_argument("--latents", type=_positive_int)
    sw.add_argument("--eval-steps", type=_positive_int)
    sw.add_argument("--eval-samples", type=_positive_int)
    sw.add_argument("--progress", action="store_true", help="show each run's progress bar (local backend)")
    sw.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="local: one run at a time in this process; ray: each run a Ray task (pip install fond[ray])")
    sw.add_argument("--address", help="ray: the cluster to join (auto, HOST:6379, ray://HOST:10001; default: "
                                      "RAY_ADDRESS, else a local Ray instance)")
    sw.add_argument("--cpus-per-run", type=_nonneg_float, metavar="N", help="ray: CPUs per run (default 1)")
    sw.add_argument("--gpus-per-run", type=_nonneg_float, metavar="N", help="ray: GPUs per run (default 0)")
    sw.add_argument("--ray-cpus", type=_positive_int, metavar="N",
                    help="ray: CPUs of the local Ray instance (default: all of this machine's)")

    an = sub.add_parser("analyze", help="one analysis of trained runs: numbers (JSON) and a figure (PNG)")
    an.add_argument("kind", choices=("frontier", "convergence", "classify", "ood", "gabor", "tuning", "latency",
                                     "serial", "tracking", "raster", "cost", "bitwidth", "contrast"))
    an.add_argument("runs", type=Path, nargs="+",
                    help="run directories or pretrained:NAME (frontier: also sweep directories)")
    an.add_argument("--out", required=True, type=Path, help="folder for KIND.json and KIND.png")
    an.add_argument("--steps", type=_positive_int, default=1000, help="inference steps")
    an.add_argument("--samples", type=_positive_int, default=500, help="held-out inputs (test digits)")
    an.add_argument("--train-samples", type=_positive_int, default=50_000,
                    help="classify: training digits of the probe (default: all 50 000, as the paper's probe)")
    an.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="classify: inference seeds")
    an.add_argument("--target-r2", type=float, help="cost: the mean-code R² every run is costed at (default: 90 %% "
                                                    "of the lowest final one among the runs)")

    rp = sub.add_parser("reproduce", help="train the paper's comparisons, run every analysis, write index.md")
    rp.add_argument("--preset", choices=("quick", "paper"), default="quick",
                    help="quick: about an hour on 2 CPU cores; paper: the full protocol (GPU advised)")
    rp.add_argument("--out", type=Path, default=Path("runs/reproduce"))

    cp = sub.add_parser("compare", help="print the evaluations of several runs side by side (Markdown table)")
    cp.add_argument("runs", type=Path, nargs="+", help="run directories evaluated by `fond train` or `fond eval`")
    cp.add_argument("--dictionaries", type=Path, metavar="PNG",
                    help="also draw the runs' dictionaries side by side (linear decoders on image patches)")

    bn = sub.add_parser("bench", help="time inference steps and training iterations against the machine's floor "
                                      "and a straightforward implementation (Markdown table)")
    bn.add_argument("run", type=Path, nargs="?",
                    help="a trained iP-VAE run (or pretrained:NAME) for realistic rates (default: the shipped "
                         "iP-VAE of each D at K 512; a fresh model at other sizes)")
    bn.add_argument("--batch", type=_positive_int, default=1000, help="inference batch B")
    bn.add_argument("--train-batch", type=_positive_int, default=200, help="training batch B")
    bn.add_argument("--latents", type=_positive_int, default=512, help="K")
    bn.add_argument("--inputs", type=_positive_int, nargs="+", default=[256, 784], help="D values to measure")
    bn.add_argument("--steps", type=_positive_int, default=100, help="inference steps timed")
    bn.add_argument("--train-steps", type=_positive_int, default=16, help="T_train of the timed iteration")
    bn.add_argument("--n-exp", type=_positive_int, default=30,
                    help="arrival times per element in the straightforward relaxed sampler (the paper's code)")
    bn.add_argument("--repeats", type=_positive_int, default=3, help="timings per entry (the best is kept)")
    bn.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    bn.add_argument("--json", type=Path, help="also write the rows as JSON here")

    pt = sub.add_parser("pretrained", help="the reference models that ship with fond: list, show a card, verify "
                                           "one, pack a finished run as one")
    pts = pt.add_subparsers(dest="action", required=True, parser_class=_Parser)
    pts.add_parser("list", help="the pretrained models and their numbers (Markdown table)")
    show = pts.add_parser("show", help="print a model's card")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="the card as JSON (default: Markdown)")
    check = pts.add_parser("verify", help="check the weights' SHA-256 and re-run the card's check sample")
    check.add_argument("name")
    check.add_argument("--full", action="store_true", help="re-run the card's main sample instead (slower)")
    pk = pts.add_parser("pack", help=f"copy a finished run into the models folder (${DIRECTORY_ENV} or the "
                                     "package's) with its card, evaluated at --steps on held-out inputs")
    pk.add_argument("run", type=Path, help="a trained run directory")
    pk.add_argument("name", help="the model's name, e.g. ipvae-natural16")
    pk.add_argument("--title", help="one line describing the model (default: model and data)")
    pk.add_argument("--command", dest="train_command", help="the command that trained it (default: rebuilt "
                                                           "from the run's config)")
    pk.add_argument("--steps", type=_positive_int, default=1000, help="T_test of the card's numbers")
    pk.add_argument("--samples", type=_positive_int, default=1000, help="held-out inputs of the card's numbers")
    pk.add_argument("--check-samples", type=_positive_int, default=100, help="held-out inputs of the quick check")
    pk.add_argument("--seed", type=int, default=0, help="evaluation seed")
    pk.add_argument("--gabor", action=argparse.BooleanOptionalAction, default=None,
                    help="record the Gabor fraction (default: for a linear dictionary on square natural patches)")

    xp = sub.add_parser("export", help="write a model in another format: nir (a Neuromorphic Intermediate "
                                       "Representation graph for neuromorphic simulators and chips)")
    xps = xp.add_subparsers(dest="format", required=True, parser_class=_Parser)
    xn = xps.add_parser("nir", help="an iP-VAE with a linear decoder as a NIR graph (.nir, HDF5); "
                                    "fond.export_nir.read_nir reads it back")
    xn.add_argument("run", type=Path, help="run or model directory, or pretrained:NAME")
    xn.add_argument("out", type=Path, help="the .nir file to write")
    qz = sub.add_parser("quantize", help="write an iP-VAE as an integer model: fixed-point weights and membrane "
                                         "potentials, integer Poisson draws (fond.fixedpoint)")
    qz.add_argument("run", type=Path, help="run or model directory of an iP-VAE with a linear decoder, or "
                                           "pretrained:NAME")
    qz.add_argument("--weight-bits", type=_positive_int, default=8, help="bits of every weight (2..16)")
    qz.add_argument("--state-bits", type=_positive_int, default=16, help="bits of the membrane potentials (6..24)")
    qz.add_argument("--input-bits", type=_positive_int, default=12, help="bits of the input's levels (2..16)")
    qz.add_argument("--input-range", type=_nonneg_float, default=16.0, help="inputs are clipped to ±this")
    qz.add_argument("--rate-bits", type=_positive_int, default=8,
                    help="fractional bits of u on the Poisson table's grid (1..12)")
    qz.add_argument("--out", type=Path, help="folder to write (default: runs/NAME-wBsS)")
    for command in (tr, ev, en, sw, an, rp, bn):
        command.add_argument("--device", default="cpu", help=DEVICE_HELP)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    from fond.bench import format_table, rows_to_json, run_bench

    if args.run is not None:
        import fond
        from fond.families.poisson import PoissonFamily

        model = fond.load(args.run)
        if not isinstance(getattr(model, "family", None), PoissonFamily) or model.dictionary is None:
            raise FondError(f"{args.run}: fond bench measures iP-VAE runs with a linear decoder")
    rows = run_bench(str(args.run) if args.run else None, inference_batch=args.batch, train_batch=args.train_batch,
                     latents=args.latents, inputs=tuple(args.inputs), inference_steps=args.steps,
                     train_steps=args.train_steps, n_exp=args.n_exp, repeats=args.repeats, memory=not args.no_memory,
                     log=lambda msg: print(f"fond: {msg}", file=sys.stderr), device=args.device)
    import torch

    print(f"{torch.get_num_threads()} threads; times are the best of {args.repeats}")
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows_to_json(rows), indent=2))
    return 0



def _train_config(args: argparse.Namespace):
    from fond.config import TrainConfig, config_from_dict, load_json, preset

    cfg = preset(args.preset, args.model, args.data)
    if args.config is not None:
        overrides = load_json(args.config)
        cfg = config_from_dict(TrainConfig, {**cfg.__dict__, **overrides}, source=str(args.config))
    updates = {"beta": args.beta, "steps": args.steps, "iterations": args.iterations,
               "batch_size": args.batch_size, "seed": args.seed}
    return replace(cfg, **{k: v for k, v in updates.items() if v is not None})


def load_data(spec, **kwargs):
    """``fond.data.load_data`` with its warnings (skipped files) held back until it succeeds: data it refuses
    gets the one error line, which names what was skipped, not the warnings that led to it as well."""
    from fond.data import load_data as load

    return _quietly(load, spec, **kwargs)


def _quietly(loader, spec, **kwargs):
    """``loader(spec, **kwargs)`` with its warnings shown only once it has succeeded (see ``load_data``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = loader(spec, **kwargs)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return data


def _inputs_for(args: argparse.Namespace, run_info: dict, model):
    """The data ``fond eval`` / ``fond encode`` run on: ``--images`` through the run's preprocessing, ``--data``,
    or the run's validation split; warned about in one line when far from the training inputs."""
    from fond.resume import preprocessing_of

    if args.images is not None and args.data is not None:
        raise FondError("pass --images or --data, not both")
    if args.images is not None:
        data = _image_inputs(args.images, preprocessing_of(run_info), args.run, args.samples, args.seed)
        spec = f"{len(args.images)} image path(s)"
    else:
        spec = args.data or run_info.get("data", {}).get("spec")
        if spec is None:
            raise FondError(f"{args.run}: no data recorded for this model; pass --data")
        data = _load_run_data(spec, run_info, args.seed, args.samples, split_file=args.split_file)
    if data.n_inputs != model.n_inputs:
        raise FondError(f"data '{spec}' has dimension {data.n_inputs}, the model expects {model.n_inputs}")
    if args.data is not None:
        _warn_if_far(run_info, data.val)
    return data


def _image_inputs(paths: list[Path], record, run: Path, samples: int | None, seed: int):
    """PatchData of the images at ``paths`` (files or folders) through the run's ``Preprocessing``."""
    from fond.data import PatchData
    from fond.data.files import read_images

    if record is None:
        raise FondError(f"{run}: this run's inputs were not made from images by a recorded transform (a .npy "
                        "file, colour or contrast-normalised patches): pass --data with inputs prepared as in "
                        "training")
    x = record.inputs_from_images(read_images(paths), n=samples or 5000, seed=seed)
    side = math.isqrt(x.shape[1])
    return PatchData(train=x, val=x, patch_shape=(side, side), name=f"{len(x)} inputs from images")


def _warn_if_far(run_info: dict, x) -> None:
    """One warning line when inputs x are far from the run's training inputs (another kind of data)."""
    from fond.data.preprocessing import far_from_training
    from fond.resume import preprocessing_of

    data = run_info.get("data") or {}
    try:
        record = preprocessing_of(run_info)
    except FondError:  # a model folder without its training record
        return
    if record is not None:
        message = record.far_from_training(x)
    elif "input_std" in data:
        message = far_from_training(x, data["input_std"])
    else:
        return
    if message:
        warnings.warn(message, stacklevel=2)


def _load_run_data(spec: str, run_info: dict, seed: int, samples: int | None = None, split_file: bool = False):
    """The run's own split when ``spec`` is the data it was trained on, else all of ``spec``
    (``fond.data.files.evaluation_data``: every row of a .npy file, patches from every image of a folder; a
    named set's held-out split, by default all of a test set or 5000 inputs). ``split_file``: a file or folder
    split as for training instead (its held-out part only)."""
    from fond.data.files import evaluation_data, held_out_size
    from fond.resume import training_split

    if spec == run_info.get("data", {}).get("spec") and "train" in run_info:
        trained_on, split = training_split(run_info)
        return load_data(trained_on, **split)
    n_val = samples or held_out_size(spec) or 5000
    if split_file:
        return load_data(spec, n_val=n_val, seed=seed)
    return _quietly(evaluation_data, spec, n_val=n_val, seed=seed)


#: ``fond train`` options that set the run's configuration (taken from the checkpoint with --resume)
_TRAIN_CONFIG_OPTIONS = ("model", "decoder", "decoder_hidden", "encoder", "encoder_hidden", "sparsity", "family_option",
                         "method_option", "data", "preset", "config", "latents", "beta", "steps", "iterations",
                         "batch_size", "seed")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"fond: warning: {message}", file=sys.stderr if file is None else file)


def _resume_run(args: argparse.Namespace):
    """``fond train --resume DIR``: the run's data, train and model configuration, from its checkpoint."""
    from fond.train import run_configuration

    defaults = vars(build_parser().parse_args(["train", "--resume", "x"]))
    given = [key for key in _TRAIN_CONFIG_OPTIONS if getattr(args, key) != defaults[key]]
    if args.out is not None or given:
        flag = "--out" if args.out is not None else "--" + given[0].replace("_", "-")
        raise FondError(f"--resume DIR takes the configuration from the run's checkpoint; drop {flag}")
    cfg, model_cfg, data_info = run_configuration(args.resume)
    spec = data_info.get("spec")
    if not isinstance(spec, str):
        raise FondError(f"{args.resume}: its checkpoint does not record the training data")
    args.out, args.model, args.decoder = args.resume, model_cfg.model, model_cfg.decoder
    return cfg, model_cfg, load_data(spec, n_train=cfg.n_train, n_val=cfg.n_val, seed=cfg.seed), spec


def cmd_train(args: argparse.Namespace) -> int:
    from fond.distributed import close, context_from_env

    args.distributed = context_from_env(args.device)  # torchrun: join the process group (else a single process)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return _cmd_train(args)
    finally:
        close(args.distributed)


def _say(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr, from rank 0 only under torchrun."""
    if args.distributed.is_main:
        print(message, file=sys.stderr)


def _cmd_train(args: argparse.Namespace) -> int:
    from fond.config import ModelConfig, preset_model_options, take_latents

    if args.resume is not None:
        cfg, model_cfg, data, spec = _resume_run(args)
        _say(args, f"fond: resuming {args.model} ({args.decoder} decoder) in {args.out}: {cfg.iterations} "
                   f"iterations, T_train {cfg.steps}, β {cfg.beta}")
        return _train_and_report(args, cfg, model_cfg, data, spec)
    if args.out is None:
        raise FondError("fond train needs --out DIR (a new run, or one to continue) or --resume DIR")
    cfg = _train_config(args)
    data = load_data(args.data, n_train=cfg.n_train, n_val=cfg.n_val, seed=cfg.seed)
    options = preset_model_options(args.preset, args.model, args.data)
    n_latents = take_latents(options, args.latents)
    family_options = {**options.pop("family_options", {}), **dict(args.family_option)}
    if args.encoder is not None:  # explicit options win over the preset's
        options["encoder"] = args.encoder
    method_options = dict(args.method_option)
    if args.sparsity is not None:
        method_options["sparsity"] = args.sparsity
    model_cfg = ModelConfig(n_inputs=data.n_inputs, n_latents=n_latents, model=args.model,
                            decoder=args.decoder, decoder_hidden=args.decoder_hidden,
                            encoder_hidden=args.encoder_hidden, family_options=family_options,
                            method_options=method_options, **options)
    ranks = f" on {args.distributed.world_size} processes" if args.distributed.distributed else ""
    _say(args, f"fond: training {args.model} ({args.decoder} decoder) on {data.name}{ranks}: {data.train.shape[0]} "
               f"train / {data.val.shape[0]} held-out inputs of dimension {data.n_inputs}; preset {cfg.preset}, "
               f"{cfg.iterations} iterations, T_train {cfg.steps}, β {cfg.beta}")
    return _train_and_report(args, cfg, model_cfg, data, args.data)


def _train_and_report(args: argparse.Namespace, cfg, model_cfg, data, spec: str) -> int:
    from fond.experiment import run_experiment

    result = run_experiment(data, cfg, model_cfg, args.out, data_spec=spec, eval_steps=args.eval_steps,
                            evaluate=not args.no_eval, progress=not args.no_progress, distributed=args.distributed,
                            device=args.device)
    trained = result.train
    _say(args, f"fond: trained {trained.iterations} iterations in {trained.seconds / 60:.1f} min -> {args.out}")
    if result.evaluation is None:  # --no-eval, or a rank other than 0
        return 0
    _print_summary(result.evaluation.summary(), as_json=False)
    if not result.row["complete"]:
        print(f"fond: warning: this model is mid-schedule ({trained.iterations} of {cfg.iterations} iterations); "
              f"its numbers are not the recipe's: finish it with `fond train --resume {args.out}`", file=sys.stderr)
    print(f"fond: report written to {RunFolder(args.out).report_path}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fond.experiment import evaluate_and_report
    from fond.pretrained import report_folder
    from fond.resume import load_model
    from fond.train import read_run

    run_info = read_run(args.run)
    model = load_model(args.run, args.device)
    data = _inputs_for(args, run_info, model)
    anytime = {} if args.until_converged is None else {"tol": args.until_converged, "window": args.window}
    write = not args.no_report and args.data is None and args.images is None and not anytime
    out = report_folder(args.run, args.out)  # never inside the package for pretrained:NAME
    evaluation = evaluate_and_report(out, model, data, steps=args.steps, samples=args.samples, seed=args.seed,
                                     write=write, **anytime)
    _print_summary(evaluation.summary(), as_json=args.json)
    if anytime and not args.json:
        print(f"anytime: inputs froze after {evaluation.steps_used:.0f} of {args.steps} steps on average; the "
              f"rollouts ran {evaluation.steps_run:.0f} ({args.steps / evaluation.steps_run:.1f}× fewer steps)")
    if write and out != args.run:
        print(f"fond: report written to {RunFolder(out).report_path}", file=sys.stderr)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from fond.encode import encode
    from fond.resume import load_model
    from fond.train import read_run

    run_info = read_run(args.run)
    model = load_model(args.run, args.device)
    data = _inputs_for(args, run_info, model)
    x = data.val[: args.samples] if args.samples else data.val
    shapes = encode(model, x, args.out, args.steps, what=[w.strip() for w in args.what.split(",") if w.strip()],
                    record=args.record, seed=args.seed, chunk_size=args.chunk, progress=not args.no_progress)
    listed = ", ".join(f"{name} {'×'.join(map(str, shape))}" for name, shape in shapes.items())
    print(f"fond: wrote {args.out}: {listed}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fond.export_nir import write_nir
    from fond.resume import load_model

    model = load_model(args.run)
    path = write_nir(model, args.out)
    print(f"fond: wrote {path}: NIR graph of {model.n_latents} Poisson neurons on {model.n_inputs} inputs",
          file=sys.stderr)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from fond.fixedpoint import quantize
    from fond.resume import load_model
    from fond.train import read_run

    model = quantize(load_model(args.run), args.weight_bits, args.state_bits, input_bits=args.input_bits,
                     input_range=args.input_range, rate_bits=args.rate_bits)
    model.run_info = {key: value for key, value in read_run(args.run).items() if key in ("train", "data")}
    out = args.out or Path("runs") / f"{args.run.name}-w{args.weight_bits}s{args.state_bits}"
    path = model.save(out)
    fmt = model.fmt
    print(f"fond: wrote {path}: {model.n_latents} integer neurons, {fmt.weight_bits}-bit weights, {fmt.state_bits}-bit "
          f"potentials (2^-{fmt.fraction_bits} nats); evaluate it with `fond eval {path}`", file=sys.stderr)
    return 0


def cmd_pretrained(args: argparse.Namespace) -> int:
    from fond import pretrained

    if args.action == "list":
        print(pretrained.listing())
    elif args.action == "show":
        card = pretrained.card(args.name)
        print(json.dumps(card, indent=2) if args.json else pretrained.card_markdown(card).rstrip("\n"))
    elif args.action == "verify":
        for key, pair in pretrained.verify(args.name, full=args.full).items():
            print(f"{key:<18} card {pair['card']}  now {pair['now']}")
        print(f"fond: {args.name}: SHA-256 and numbers agree with its card", file=sys.stderr)
    else:
        path = pretrained.pack(args.run, args.name, title=args.title, command=args.train_command, steps=args.steps,
                               samples=args.samples, check_samples=args.check_samples, seed=args.seed,
                               gabor=args.gabor, log=lambda message: print(f"fond: {message}", file=sys.stderr))
        print(pretrained.card_markdown(pretrained.card(args.name)), end="")
        print(f"fond: packed {args.run} as {args.name} in {path}", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fond.config import config_from_dict
    from fond.sweep import RESULT_COLUMNS, SWEEP_CSV, SweepConfig, load_sweep_file, run_sweep

    ray_flags = {"--address": args.address, "--cpus-per-run": args.cpus_per_run,
                 "--gpus-per-run": args.gpus_per_run, "--ray-cpus": args.ray_cpus}
    if args.backend == "local":
        given = [flag for flag, value in ray_flags.items() if value is not None]
        if given:
            raise FondError(f"{given[0]} applies to --backend ray only")
    fields = load_sweep_file(args.config) if args.config is not None else {}
    for key in ("models", "betas", "t_train", "seeds", "data", "preset", "iterations", "batch_size", "latents",
                "eval_steps", "eval_samples"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if "models" not in fields:
        raise FondError("a sweep needs models: pass --models or a config file that lists them")
    sweep = config_from_dict(SweepConfig, fields, source=str(args.config or "sweep flags"))

    def log(message: str) -> None:
        print(f"fond: {message}", file=sys.stderr, flush=True)

    failures: dict[str, str] = {}
    if args.backend == "ray":
        from fond.sweep_ray import run_sweep_ray

        rows, failures = run_sweep_ray(sweep, args.out, address=args.address,
                                       cpus_per_run=1.0 if args.cpus_per_run is None else args.cpus_per_run,
                                       gpus_per_run=args.gpus_per_run or 0.0, ray_cpus=args.ray_cpus, log=log)
    else:
        rows = run_sweep(sweep, args.out, progress=args.progress, log=log, device=args.device)
    shown = ("model", "beta", "t_train", "seed", "r2", "r2_rates", "zeros", "rate_distortion", "convergence_step",
             "diverged")
    print("| " + " | ".join(shown) + " |\n|" + "---|" * len(shown))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) and k not in ("beta",) else str(row[k])
                                for k in shown) + " |")
    print(f"fond: {len(rows)} runs in {args.out / SWEEP_CSV} ({', '.join(RESULT_COLUMNS[:3])}, ...)",
          file=sys.stderr)
    if failures:
        for name, error in failures.items():
            print(f"fond: error: run {name} failed: {error}", file=sys.stderr)
        print(f"fond: {len(failures)} of {len(sweep.runs())} runs failed; fix the cause and run the same command "
              "again: finished runs are skipped", file=sys.stderr)
        return 1
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from fond.analysis.commands import run_analysis

    path = run_analysis(args.kind, args.runs, args.out, steps=args.steps, samples=args.samples,
                        seeds=args.seeds, train_samples=args.train_samples, target_r2=args.target_r2,
                        device=args.device)
    print(path.read_text(), end="")
    print(f"fond: {args.kind}: {path} and {path.with_suffix('.png')}", file=sys.stderr)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from fond.reproduce import reproduce

    index = reproduce(args.preset, args.out, log=lambda m: print(f"fond: {m}", file=sys.stderr, flush=True),
                      device=args.device)
    print(f"fond: report written to {index}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fond.checkpoint import read_config
    from fond.config import ModelConfig, config_from_dict, load_json
    from fond.registry import model_title

    rows = ["| model | decoder | parameters | R² (sample) | R² (mean) | zeros | rate–distortion d | "
            "convergence step | diverged | run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in args.runs:
        folder = RunFolder(run)
        config = config_from_dict(ModelConfig, read_config(run).get("model"), source=str(folder.config_path))
        path = folder.eval_path
        if not path.exists():
            raise FondError(f"{run}: no evaluation yet ({path} missing); run `fond eval {run}` first")
        e = load_json(path)
        try:
            rows.append(f"| {model_title(config.model)} | {config.decoder} | {e['n_params']:,} | "
                        f"{e['r2']:.3f} | {e['r2_rates']:.3f} | {e['zeros']:.3f} | {e['rate_distortion']:.3f} | "
                        f"{e['convergence_step']} | {'yes' if e['diverged'] else 'no'} | {run} |")
        except (KeyError, TypeError, ValueError):
            raise FondError(f"{path}: not an evaluation summary written by fond") from None
    print("\n".join(rows))
    if args.dictionaries is not None:
        print(f"fond: dictionaries side by side: {_plot_run_dictionaries(args.runs, args.dictionaries)}")
    return 0


def _plot_run_dictionaries(runs: list[Path], path: Path) -> Path:
    """``fond compare --dictionaries PATH``: each run captioned as the user named it (pretrained:NAME)."""
    from fond.pretrained import models_directory
    from fond.report import plot_run_dictionaries

    shipped = models_directory().resolve()
    return plot_run_dictionaries({(f"pretrained:{run.name}" if run.resolve().parent == shipped else str(run)): run
                                  for run in runs}, path)


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if summary.get("diverged"):
        print("WARNING: the rollout diverged (non-finite values, mean-code R² < 0, or some input's R² < −1)")


#: the run arguments of the commands that read run folders without writing into them: each may be pretrained:NAME
_RUN_ARGUMENTS = {"eval": "run", "encode": "run", "bench": "run", "analyze": "runs", "compare": "runs",
                  "export": "run", "quantize": "run"}


def _resolve_pretrained(args: argparse.Namespace) -> None:
    """The one place ``pretrained:NAME`` becomes a folder: the model's, checked against its card's SHA-256."""
    from fond.pretrained import resolve_run

    key = _RUN_ARGUMENTS.get(args.command)
    value = None if key is None else getattr(args, key)
    if isinstance(value, list):
        setattr(args, key, [resolve_run(run) for run in value])
    elif value is not None:
        setattr(args, key, resolve_run(value))


def _plugin_modules(argv: list[str] | None) -> list[str]:
    """The ``--plugin`` modules of the command line, read before the full parse (they may register models)."""
    early = _Parser(prog="fond", add_help=False, allow_abbrev=False)
    early.add_argument("--plugin", action="append", default=[])
    return early.parse_known_args(sys.argv[1:] if argv is None else argv)[0].plugin


def main(argv: list[str] | None = None) -> int:
    from fond.registry import load_plugins

    try:
        load_plugins(_plugin_modules(argv))
    except FondError as exc:
        print(f"fond: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    previous = signal.signal(signal.SIGTERM, _terminate) if argv is None else None
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        commands = {"train": cmd_train, "eval": cmd_eval, "encode": cmd_encode, "compare": cmd_compare,
                    "sweep": cmd_sweep, "analyze": cmd_analyze, "reproduce": cmd_reproduce, "bench": cmd_bench,
                    "pretrained": cmd_pretrained, "export": cmd_export, "quantize": cmd_quantize}
        _resolve_pretrained(args)
        return commands[args.command](args)
    except FondError as exc:
        print(f"fond: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as a RuntimeError
        text = str(exc)
        if not isinstance(exc, MemoryError) and "can't allocate memory" not in text and "out of memory" not in text:
            raise
        wanted = re.search(r"tried to allocate (\d+) bytes", text)
        size = f" ({int(wanted.group(1)) / 1e9:.3g} GB asked for)" if wanted else ""
        print(f"fond: error: out of memory{size}: use fewer inputs or latents (--batch-size, --latents, --samples)",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (e.g. `fond eval DIR --json | head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        from fond.train import TrainingInterrupted

        if args.command == "train" and isinstance(exc, TrainingInterrupted):
            hint = f"; resume with `fond train --resume {args.out}`" if exc.checkpoint is not None else ""
            print(f"fond: {exc}{hint}", file=sys.stderr)
            return 130
        hint = ""
        if args.command in ("train", "sweep", "reproduce") and args.out is not None:
            hint = f"; progress is checkpointed in {args.out}: run the same command to resume"
        print(f"fond: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):  # SIGTERM → the same clean stop as Ctrl-C
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
