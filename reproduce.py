"""Reproduce the three papers' findings in one command: pretrain the three character-level
backbones (train_char.py, reused when already there), then run minipeft.experiments (the sweep,
every setting with 5 seeds, the verdicts) and write its report with the plots.

    python reproduce.py                              # ~1 hour on 2 CPU cores (results/README.md says how long)
    python reproduce.py --quick                      # the same pipeline in seconds: no findings, just the plumbing
    python reproduce.py --out results --overwrite    # regenerate the repository's results/
    python reproduce.py --resume                     # finish a stopped run: every finished run is kept
"""

import argparse
import os
import sys

import train_char
from minipeft import experiments
from minipeft.errors import MiniPeftError

QUICK_PRETRAINING = ["--steps", "6", "--batch-size", "4", "--block-size", "32", "--eval-every", "6", "--eval-batches", "1"]


def build_parser():
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reproduce", help="folder for README.md, results.json and the plots (default: "
                   "%(default)s; the repository's are regenerated with --out results --overwrite)")
    p.add_argument("--backbones", default=None, help="use the ready backbones in this folder, named as train_char.py "
                   "names them (char-small/, char/, char-large/), without pretraining (default: pretrain or reuse them "
                   "in runs/, where train_char.py writes them; with --quick in OUT/backbones)")
    p.add_argument("--quick", action="store_true", help="the whole pipeline in seconds: backbones of 6 steps, 2 seeds, "
                   "3 fine-tuning steps, 8 test examples (for the tests; its verdicts mean nothing)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out: keep its finished runs, do the rest")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out (without it, such an "
                   "--out is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_out(parser, args):
    """Refuse an --out that holds another run's results, unless --resume or --overwrite says what to do."""
    if args.resume and args.overwrite:
        parser.error("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file; give a folder")
    earlier = experiments.earlier_results(args.out)
    if earlier and not (args.resume or args.overwrite):
        parser.error(f"--out {args.out} already holds results ({', '.join(earlier)}): --resume finishes that run, "
                     "--overwrite replaces it, another --out keeps it")
    if args.resume and "results.json" not in earlier:
        parser.error(f"--resume: {args.out} holds no results.json to continue; run without --resume")


def pretrain_backbones(folders, quick):
    """Run train_char.py for each backbone size; a finished checkpoint there is reused as it is."""
    for size, folder in folders.items():
        print(f"backbone {size}: {folder}", flush=True)
        argv = ["--size", size, "--out", folder, "--method", "none", "--sample-length", "0"]
        train_char.main(argv + (QUICK_PRETRAINING if quick else []))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_out(parser, args)
    try:
        if args.backbones:
            folders = experiments.backbone_folders(args.backbones)
        else:
            folders = experiments.backbone_folders(os.path.join(args.out, "backbones") if args.quick else "runs")
            pretrain_backbones(folders, args.quick)
        experiments.reproduce(folders, args.out, quick=args.quick, resume=args.resume, overwrite=args.overwrite,
                              progress=not args.no_progress)
    except MiniPeftError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"\ninterrupted: {args.out}{os.sep}results.json keeps every finished run; --resume continues\n")
    print(f"written to {args.out}{os.sep}: " + ", ".join(experiments.earlier_results(args.out)))


if __name__ == "__main__":
    sys.exit(main())
