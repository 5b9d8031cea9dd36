"""The ``minigrok`` command line (``python -m minigrok ...``).

Every user mistake (a bad argument, a missing or corrupt file) becomes one line on stderr
and exit code 2; nothing else is caught, so a real bug keeps its traceback.
"""

import argparse
import sys
import time

from .errors import MinigrokError


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000


def cmd_make_checkpoint(args):
    from .config import preset
    from .make_checkpoint import make_checkpoint

    cfg = preset(args.preset, args.num_layers)
    t0 = time.perf_counter()

    def progress(i, n, name):
        print(f"\r[{i + 1}/{n}] {name:<60}", end="", file=sys.stderr, flush=True)

    out = make_checkpoint(args.out, cfg, seed=args.seed, force=args.force,
                          progress=progress if sys.stderr.isatty() else None)
    print(f"wrote {out} ({args.preset}, {cfg.num_layers} layers, seed {args.seed}) "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr if sys.stderr.isatty() else sys.stdout)


def cmd_inspect(args):
    from .checkpoint import active_int8_bytes, inspect_rows, open_checkpoint

    ck = open_checkpoint(args.checkpoint)
    rows = list(inspect_rows(ck))
    head = ("index", "file", "name", "dtype", "shape", "scales", "bytes")
    widths = [max(len(str(r[c])) for r in rows + [head]) for c in range(len(head))]
    line = "  ".join(f"{{:{'>' if c in (0, 6) else '<'}{w}}}" for c, w in enumerate(widths))
    print(line.format(*head))
    for r in rows:
        print(line.format(*r))
    cfg = ck.config
    n_params = sum(_count(s.shape) for s in ck.specs)
    on_disk = sum(r[6] for r in rows)
    active = active_int8_bytes(cfg)
    embed = cfg.vocab_size * cfg.emb_size * 4
    print()
    print(f"tensors:        {len(rows)} files, {cfg.num_layers} layers")
    print(f"parameters:     {n_params:,}")
    print(f"bytes on disk:  {on_disk:,} ({_human(on_disk)})")
    print(f"per token:      {active:,} int8 weight bytes ({_human(active)}) with top-"
          f"{cfg.num_selected_experts} of {cfg.num_experts} experts, plus {_human(embed)} of "
          f"fp32 embeddings for the logits")


def _count(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minigrok", description="Grok-1 in plain NumPy.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("make-checkpoint", help="write a random checkpoint in the official format")
    s.add_argument("--preset", required=True, help="tiny or grok-1")
    s.add_argument("--out", required=True, help="directory to create (holds ckpt-0/ and config.json)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-layers", type=int, default=None, help="layers to write (default: the preset's)")
    s.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    s.set_defaults(func=cmd_make_checkpoint)

    s = sub.add_parser("inspect", help="list every tensor of a checkpoint and the totals")
    s.add_argument("--checkpoint", required=True, help="folder holding ckpt-0/ (or ckpt-0/ itself)")
    s.set_defaults(func=cmd_inspect)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except MinigrokError as e:
        print(f"minigrok: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minigrok: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0
