"""The ``minigrok`` command line (``python -m minigrok ...``).

Every user mistake (a bad argument, a missing or corrupt file) becomes one line on stderr
and exit code 2; nothing else is caught, so a real bug keeps its traceback.
"""

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

from .errors import MinigrokError


def cmd_make_checkpoint(args):
    from .formats.make_checkpoint import make_checkpoint
    from .reference.config import preset

    cfg = preset(args.preset, args.num_layers)
    t0 = time.perf_counter()

    def progress(i, n, name):
        print(f"\r[{i + 1}/{n}] {name:<60}", end="", file=sys.stderr, flush=True)

    out = make_checkpoint(args.out, cfg, seed=args.seed, force=args.force,
                          progress=progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"wrote {out} ({args.preset}, {cfg.num_layers} layers, seed {args.seed}) "
          f"in {time.perf_counter() - t0:.1f} s")


def cmd_train(args):
    from .engine.devices import backend
    from .formats.tokenizer import find_tokenizer, load_tokenizer
    from .training.trainer import train

    if "," in args.device:
        raise MinigrokError(f"--device {args.device}: train runs on one device")
    xp = backend(args.device)
    sp = load_tokenizer(find_tokenizer(args.tokenizer))
    m = train(args.out, sp, steps=args.steps, seed=args.seed, xp=xp, resume=args.resume,
              force=args.force)
    print(f"trained {m['steps']} steps ({m['tokens']:,} tokens) in {m['seconds']:.0f} s, "
          f"{m['tokens_per_second']:,.0f} tokens/s")
    print(f"held-out loss {m['heldout_loss']:.4f} nats/token (int8 as released: "
          f"{m['heldout_loss_int8']:.4f}; unigram baseline {m['unigram_loss']:.4f})")
    print(f"wrote {args.out}/checkpoint (official format) and {args.out}/model.npz "
          f"({m['model_npz_bytes'] / 1e6:.1f} MB)")


def cmd_structure(args):
    from .formats.checkpoint import structure

    layouts = structure(args.checkpoint)
    files = sum(len(layout["files"]) for layout in layouts)
    print(f"{files} tensor files, {len(layouts)} layout{'s' * (len(layouts) != 1)}")
    for i, layout in enumerate(layouts, 1):
        names = layout["files"]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        print(f"layout {i}: {len(names)} files ({shown})")
        print(f"  holds:    {layout['holds']}")
        print(f"  protocol: {layout['protocol']}")
        print(f"  globals:  {', '.join(layout['globals']) or '-'}")
        print(f"  arrays:   {layout['payload_bytes']:,} bytes in all; files of "
              f"{layout['smallest']:,} to {layout['largest']:,} bytes")


def cmd_inspect(args):
    from .formats.checkpoint import active_int8_bytes, human_bytes, inspect_rows, open_checkpoint

    if args.structure:
        return cmd_structure(args)
    ck = open_checkpoint(args.checkpoint)
    rows = list(inspect_rows(ck))
    head = ("index", "file", "name", "dtype", "shape", "scales", "bytes")
    widths = [max(len(str(r[c])) for r in rows + [head]) for c in range(len(head))]
    line = "  ".join(f"{{:{'>' if c in (0, 6) else '<'}{w}}}" for c, w in enumerate(widths))
    print(line.format(*head))
    for r in rows:
        print(line.format(*r))
    cfg = ck.config
    n_params = sum(math.prod(s.shape) for s in ck.specs)
    on_disk = sum(r[6] for r in rows)
    active = active_int8_bytes(cfg)
    embed = cfg.vocab_size * cfg.emb_size * 4
    print()
    print(f"tensors:        {len(rows)} files, {cfg.num_layers} layers")
    print(f"parameters:     {n_params:,}")
    print(f"bytes on disk:  {on_disk:,} ({human_bytes(on_disk)})")
    print(f"per token:      {active:,} int8 weight bytes ({human_bytes(active)}) with top-"
          f"{cfg.num_selected_experts} of {cfg.num_experts} experts, plus {human_bytes(embed)} of "
          f"fp32 embeddings for the logits")


def _token_list(text: str) -> list[int]:
    ids = []
    for t in text.split(","):
        if t.strip():
            try:
                ids.append(int(t))
            except ValueError:      # the offending item only, cut short: argv may be long
                t = t.strip()
                shown = ascii(t[:24]) + ("..." if len(t) > 24 else "")
                raise MinigrokError(f"token ids must be comma-separated integers, got "
                                    f"{shown}") from None
    return ids


def cmd_generate(args):
    from .api import load
    from .formats.tokenizer import check_text, stream_text
    from .reference.sampling import check_settings

    if args.prompt is not None and not args.prompt:
        raise MinigrokError("empty prompt: give some text with --prompt")
    if args.prompt is not None:
        check_text(args.prompt, "--prompt")
    check_settings(args.temperature, args.top_p, args.seed)
    prompt = _token_list(args.prompt_tokens) if args.prompt is None else None
    m = load(args.checkpoint, device=args.device, tokenizer=args.tokenizer,
             gpu_memory=args.gpu_memory)
    m.tokenizer                          # found and checked now, before any text is printed
    if prompt is None:
        prompt = m.encode(args.prompt)
    times = [time.perf_counter()]                # start, then after each new token

    def timed(ids):
        for token in ids:
            times.append(time.perf_counter())
            yield token

    new_ids = m.generate_ids(prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed)
    for piece in stream_text(m.tokenizer, prompt, timed(new_ids)):
        print(piece, end="", flush=True)
    print()
    n = len(times) - 1
    # A prompt past the context was cut to its last tokens (with a warning): count those.
    used = min(len(prompt), m.config.sequence_len - args.max_new_tokens)
    prefill = f"{used / (times[1] - times[0]):.1f}" if n else "-"
    decode = f"{(n - 1) / (times[-1] - times[1]):.1f}" if n > 1 else "-"
    print(f"[{used} prompt tokens: {prefill} tok/s, {n} generated tokens: {decode} tok/s, "
          f"{args.device}]", file=sys.stderr)


def cmd_logits(args):
    import numpy as np

    from . import outputs
    from .api import load

    # Refused before the forward pass, not after it; replaced only where it is a .npy file.
    npy = {"force": args.force, "recognise": outputs.is_npy,
           "what": "a .npy file"}
    outputs.check_file(args.out, **npy)
    m = load(args.checkpoint, device=args.device, gpu_memory=args.gpu_memory)
    logits = m.logits(_token_list(args.tokens)).astype(np.float32)
    outputs.write_file(args.out, lambda f: np.save(f, logits), **npy)


def cmd_bench(args):
    import json

    from .bench import bench

    if args.prompt_len < 1 or args.new_tokens < 0:
        raise MinigrokError("--prompt-len must be at least 1 and --new-tokens at least 0")
    r = bench(args.checkpoint, args.prompt_len, args.new_tokens, args.device,
              gpu_memory=args.gpu_memory)
    if args.json:
        print(json.dumps(r))
        return
    print(f"checkpoint      {args.checkpoint} ({r['num_layers']} layers, {args.device})")
    print(f"load            {r['load_s']:.2f} s (time to first token {r['ttft_s']:.2f} s)")
    print(f"prefill         {r['prefill_tok_s']:.1f} tokens/s ({r['prompt_len']} tokens)")
    if r["new_tokens"]:
        print(f"decode          {r['decode_tok_s']:.2f} tokens/s ({r['new_tokens']} tokens)")
        print(f"streamed        {r['weight_gb_per_token']:.3f} GB int8 + "
              f"{r['embedding_gb_per_token']:.3f} GB fp32 embeddings per token = "
              f"{r['effective_gb_s']:.2f} GB/s")
    if "read_gb_s" in r:
        print(f"memory          {r['read_gb_s']:.3g} GB/s raw read (float32 GEMV: "
              f"{r['gemv_gb_s']:.3g} GB/s)" + (
                  f": token efficiency {r['token_efficiency']:.2f}"
                  if "token_efficiency" in r else ""))
    if "resident_layers" in r:
        print(f"gpu             {r['resident_layers']} layers resident ({r['graph_layers']} "
              f"decoding as CUDA graphs), {r['streamed_layers']} streamed from the host, "
              f"{r['gpu_pool_mb']:.0f} MB in CuPy's pool")
    if "int8_gemv_gb_s" in r:
        print(f"int8 kernel     {r['int8_gemv_gb_s']:.3g} GB/s on a 6144 x 32768 matrix "
              f"(dequantise then matmul: {r['dequant_matmul_gb_s']:.3g} GB/s): "
              f"efficiency {r['kernel_efficiency']:.2f}")
    if "bandwidth_efficiency" in r:
        print(f"per layer       {r['layer_decode_s']:.3f} s per token for {r['layer_gb']:.3f} GB int8: "
              f"bandwidth efficiency {r['bandwidth_efficiency']:.2f}")
    if "cpu_kernel" in r:
        print(f"cpu kernel      {r['cpu_kernel']}" + (
            "" if r["cpu_kernel"] == "native" else
            " (no C compiler, or MINIGROK_NATIVE=0: numpy widens int8 chunk by chunk)"))
    if "widen_gb_s" in r:
        print(f"numpy widening  {r['widen_gb_s']:.1f} GB/s of int8 to float32 on all threads "
              "(the ceiling of the numpy path)")
    print(f"peak memory     {r['peak_rss_mb']:.0f} MB resident, {r['peak_anon_mb']:.0f} MB anonymous "
          "(memory-mapped weights count only in the first)")


def _checkpoint_or_builtin(path):
    """``--checkpoint``, or the built-in model (written into the cache on first use)."""
    from .api import default_checkpoint
    return default_checkpoint() if path is None else path


def cmd_golden(args):
    from . import golden
    from .formats.checkpoint import human_bytes

    def refuse(*flags):
        for flag in flags:
            if getattr(args, flag.lstrip("-").replace("-", "_")) is not None:
                raise MinigrokError(f"golden {args.mode or ''}: {flag} does not apply here "
                                    "(see minigrok golden --help)".replace("  ", " "))

    if args.mode is None:                                # write a golden file
        if args.files:
            raise MinigrokError(f"golden: unexpected argument {args.files[0]!r} (to check a "
                                "file: golden verify FILE --checkpoint DIR)")
        missing = [f for f in ("--tokens", "--out") if getattr(args, f[2:]) is None]
        if missing:
            raise MinigrokError(f"golden: {', '.join(missing)} required (golden [--checkpoint "
                                "DIR] --tokens IDS --out FILE.npz [--layers A-B])")
        refuse("--profile")
        from . import outputs
        outputs.check_file(args.out, force=bool(args.force), what="an .npz file",
                           recognise=outputs.is_npz)
        arrays = golden.make(_checkpoint_or_builtin(args.checkpoint), _token_list(args.tokens),
                             args.layers)
        out = golden.write(args.out, arrays, force=bool(args.force))
        print(f"wrote {out}: {len(arrays)} arrays, {len(arrays['tokens'])} tokens, "
              f"{len(arrays) - 5} per-layer arrays, {human_bytes(out.stat().st_size)}")
    elif args.mode == "verify":
        if len(args.files) != 1:
            raise MinigrokError("golden verify: give one file (golden verify FILE.npz "
                                "[--checkpoint DIR])")
        refuse("--tokens", "--out", "--layers", "--profile", "--force")
        ok, line = golden.verify(args.files[0], _checkpoint_or_builtin(args.checkpoint))
        print(line)
        if not ok:
            raise SystemExit(1)
    else:
        if len(args.files) != 2:
            raise MinigrokError("golden compare: give two files (golden compare EXPECTED.npz "
                                "ACTUAL.npz)")
        refuse("--checkpoint", "--tokens", "--out", "--layers", "--force")
        expected, actual = (golden.read(f) for f in args.files)
        rows = golden.compare(expected, actual, args.profile or "float32")
        if not rows:
            raise MinigrokError(f"golden compare: {args.files[0]} and {args.files[1]} share no "
                                "array name (see docs/golden-format.md for the names)")
        print(golden.table(rows))
        print()
        for label, a, b in (("EXPECTED", expected, actual), ("ACTUAL", actual, expected)):
            only = sorted(set(a) - set(b) - {"meta"}, key=golden.model_order)
            if only:
                print(f"only in {label} (not compared): {len(only)}: {', '.join(only[:4])}"
                      + (", ..." if len(only) > 4 else ""))
        bad = golden.first_failure(rows)
        if bad is None:
            print(f"all {len(rows)} shared arrays within the {args.profile or 'float32'} "
                  "tolerances")
            return
        ties = [r["name"] for r in rows[:rows.index(bad)] if r["status"] == "tie"]
        print(f"first failing stage: {golden.describe(bad)}" +
              (f"; after a near-tie routing difference at {ties[0]}" if ties else ""))
        raise SystemExit(1)


def cmd_export(args):
    from .export.hf import export, progress_line

    progress = progress_line(sys.stderr) if sys.stderr.isatty() else None
    t0 = time.perf_counter()
    out = export(args.checkpoint, args.out, args.format, args.dtype, args.shard_gb,
                 force=args.force, tokenizer=args.tokenizer, progress=progress)
    if progress:
        print(file=sys.stderr)
    print(f"wrote {out} ({args.format} layout, {args.dtype}) in "
          f"{time.perf_counter() - t0:.1f} s")


def cmd_exercises(args):
    from . import exercises

    if args.action == "list":
        for name in exercises.names():
            print(name)
        return
    if args.action == "init":
        written = exercises.init(args.dir, force=args.force)
        print(f"wrote {len(written)} exercise stubs to {args.dir}")
        print(f"fill one in, then: python -m minigrok exercises check NAME --dir {args.dir} "
              f"(or check --all --dir {args.dir})")
        return
    # Usage mistakes first, each one line and exit code 2, before anything runs.
    if args.all and args.name:
        raise MinigrokError(f"check: give an exercise NAME or --all, not both (got "
                            f"{args.name!r} and --all)")
    if args.all and args.file:
        raise MinigrokError("check --all grades a folder: --dir DIR (DIR/NAME.py for every "
                            "exercise), not --file")
    if not args.all and not args.name:
        raise MinigrokError("check: give an exercise NAME (see: minigrok exercises list) or "
                            "--all")
    if args.json and not args.all:
        raise MinigrokError("check: --json goes with --all (one record per exercise)")
    if args.timeout is not None and not 0 < args.timeout <= exercises.MAX_TIMEOUT:
        raise MinigrokError(f"--timeout must be more than 0 and at most "
                            f"{exercises.MAX_TIMEOUT:g} seconds, got {args.timeout:g}")
    if args.dir is not None and not Path(args.dir).is_dir():
        raise MinigrokError(f"--dir {args.dir}: no such folder")
    ex = None if args.all else exercises.get(args.name)
    get_stubs = ("the exercise stubs are not beside this installation of minigrok (no {}); "
                 "copy them with `python -m minigrok exercises init DIR`, fill them in, then "
                 "check with --dir DIR")
    if args.all:
        width = max(map(len, exercises.names()))

        def line(r):                        # PASS/FAIL, name, seconds, why: as each is done
            print(f"{'PASS' if r['passed'] else 'FAIL'}  {r['name']:<{width}}  "
                  f"{r['seconds']:5.1f} s  {r['message']}", flush=True)

        folder = None if args.reference else Path(args.dir or exercises.STUBS_DIR)
        if folder is not None and not folder.is_dir():
            raise MinigrokError("--dir is required: " + get_stubs.format(folder))
        results = exercises.check_all(folder, reference=args.reference, timeout=args.timeout,
                                      report=None if args.json else line)
        passed = sum(r["passed"] for r in results)
        if args.json:
            import json
            print(json.dumps(results, indent=2))
        else:
            print(f"{passed} of {len(results)} passed in "
                  f"{sum(r['seconds'] for r in results):.1f} s")
        if passed < len(results):
            raise SystemExit(1)
        return
    # One exercise. Either way the check runs in a child process, under the time and
    # memory limits.
    if args.reference:
        ok = exercises.check(ex.name, reference=True, timeout=args.timeout)
    else:
        if args.file:
            path = Path(args.file)
        elif args.dir is not None:
            path = Path(args.dir) / f"{ex.name}.py"
        else:
            path = exercises.stub_path(ex.name)
            if not path.is_file():
                raise MinigrokError("--file is required (or --dir): " + get_stubs.format(path)
                                    + f" or --file path/to/{ex.name}.py")
        ok = exercises.check(ex.name, path=path, timeout=args.timeout)
    if not ok:
        raise SystemExit(1)


def cmd_tokenize(args):
    from .formats.tokenizer import check_text, encode, find_tokenizer, load_tokenizer

    check_text(args.text)                # before the tokenizer is looked for and read
    sp = load_tokenizer(find_tokenizer(args.tokenizer, args.checkpoint))
    ids = encode(sp, args.text)
    print(",".join(str(i) for i in ids))
    for i in ids:
        print(f"{i:>7}  {sp.id_to_piece(i)!r}")


def _seed(text: str) -> int:
    """--seed: numpy's generators take whole numbers >= 0 only."""
    try:
        seed = int(text)
    except ValueError:
        seed = None
    if seed is None or seed < 0:
        raise argparse.ArgumentTypeError(f"a whole number >= 0, got {text[:24]!a}")
    return seed


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit code 2) like every other error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _device_arguments(s):
    s.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N, or cuda:N,M,... to split the layers over GPUs")
    s.add_argument("--gpu-memory", type=float, metavar="GIB",
                   help="GiB to use per GPU at most; layers beyond it stream from the host")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minigrok", description="Grok-1 in plain NumPy, checked against the "
                "official code.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("make-checkpoint", help="write a random checkpoint in the official format")
    s.add_argument("--preset", required=True, help="tiny or grok-1")
    s.add_argument("--out", required=True, help="directory to create (holds ckpt-0/ and config.json)")
    s.add_argument("--seed", type=_seed, default=0, help="a whole number >= 0 (default 0)")
    s.add_argument("--num-layers", type=int, default=None, help="layers to write (default: the preset's)")
    s.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    s.set_defaults(func=cmd_make_checkpoint)

    s = sub.add_parser("train", help="train the built-in model's recipe (a small Grok-1 on "
                       "minigrok's stories); resumable")
    s.add_argument("--out", required=True, help="folder for the run (state, loss curve, model)")
    s.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: the recipe's, which made the built-in model)")
    s.add_argument("--seed", type=_seed, default=0, help="a whole number >= 0 (default 0)")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    s.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    s.add_argument("--force", action="store_true", help="start again over an earlier run")
    s.add_argument("--tokenizer", help="path of tokenizer.model")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("inspect", help="list every tensor of a checkpoint and the totals")
    s.add_argument("--checkpoint", required=True, help="folder holding ckpt-0/ (or ckpt-0/ itself)")
    s.add_argument("--structure", action="store_true",
                   help="the files' layouts (pickle protocol, globals, what they hold) without "
                        "reading their arrays: run this first on a download, and paste it into "
                        "a bug report when a file does not load")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("generate", help="continue a prompt, streaming the text")
    s.add_argument("--checkpoint", help="checkpoint folder (default: the built-in model)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="prompt text (encoded without BOS, as the official runner)")
    g.add_argument("--prompt-tokens", help="prompt as comma-separated token ids, e.g. 1,2,3")
    s.add_argument("--max-new-tokens", type=int, default=32)
    # NaN and inf parse as floats; check_settings refuses them before anything is loaded.
    s.add_argument("--temperature", type=float, default=0.0,
                   help="0 (default) is greedy; otherwise a finite number above 0")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]")
    s.add_argument("--seed", type=_seed, default=0, help="a whole number >= 0 (default 0)")
    _device_arguments(s)
    s.add_argument("--tokenizer", help="path of tokenizer.model")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("logits", help="full-sequence logits as a float32 [T, vocab] .npy")
    s.add_argument("--checkpoint", help="checkpoint folder (default: the built-in model)")
    s.add_argument("--tokens", required=True, help="comma-separated token ids, e.g. 5,17,300")
    s.add_argument("--out", required=True, help="output .npy file")
    s.add_argument("--force", action="store_true", help="replace an existing .npy file")
    _device_arguments(s)
    s.set_defaults(func=cmd_logits)

    s = sub.add_parser("bench", help="load time, prefill and decode speed, peak memory")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--prompt-len", type=int, default=16)
    s.add_argument("--new-tokens", type=int, default=16)
    _device_arguments(s)
    s.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("tokenize", help="token ids and pieces of a text")
    s.add_argument("text")
    s.add_argument("--tokenizer", help="path of tokenizer.model")
    s.add_argument("--checkpoint", help="look for tokenizer.model beside this checkpoint")
    s.set_defaults(func=cmd_tokenize)

    s = sub.add_parser(
        "golden", help="golden vectors: every intermediate as .npz; verify; compare",
        usage="minigrok golden [--checkpoint DIR] --tokens IDS --out FILE.npz [--layers A-B] "
              "[--force]\n"
              "       minigrok golden verify FILE.npz [--checkpoint DIR]\n"
              "       minigrok golden compare EXPECTED.npz ACTUAL.npz [--profile P]",
        description="Write, check or compare golden vectors (docs/golden-format.md).")
    s.add_argument("mode", nargs="?", choices=("verify", "compare"),
                   help="omit to write a file; verify: recompute and compare; compare: two files")
    s.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    s.add_argument("--checkpoint", help="checkpoint folder (write, verify; default: the "
                   "built-in model)")
    s.add_argument("--tokens", help="comma-separated token ids, e.g. 5,17,300 (write)")
    s.add_argument("--out", help="output .npz file (write)")
    s.add_argument("--force", action="store_true", default=None,
                   help="replace an existing .npz file (write)")
    s.add_argument("--layers", help="only these layers' stages, A-B inclusive (write)")
    s.add_argument("--profile", choices=("float32", "bfloat16"),
                   help="tolerances for compare: float32 (default) or bfloat16 ports")
    s.set_defaults(func=cmd_golden)

    s = sub.add_parser("export", help="write a checkpoint as Hugging Face safetensors "
                       "(vLLM, SGLang; docs/export.md)")
    s.add_argument("--checkpoint", required=True, help="folder holding ckpt-0/")
    s.add_argument("--format", default="hf", choices=("hf", "sglang"),
                   help="hf: the Hugging Face port's names, which vLLM loads (default); "
                        "sglang: SGLang's names")
    s.add_argument("--out", required=True, help="folder to create")
    s.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    s.add_argument("--shard-gb", type=float, default=5.0, help="GB per safetensors file")
    s.add_argument("--tokenizer", help="path of tokenizer.model (default: as generate finds it)")
    s.add_argument("--force", action="store_true", help="replace an earlier export")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("exercises", help="classroom exercises: list them, copy the stubs, "
                       "check a solution or a whole folder",
                       description="Exercises: write one Grok-1 step in lessons/exercises/NAME.py "
                       "(or in a folder made by `exercises init DIR`), then check it against "
                       "minigrok's own (exit 0 only when it passes).")
    e = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    e.add_parser("list", help="the exercise names, one per line")
    i = e.add_parser("init", help="copy every exercise's stub into a folder (for a pip-installed "
                     "minigrok: a notebook, a class machine)")
    i.add_argument("dir", metavar="DIR", help="folder to copy the stubs into (made if missing)")
    i.add_argument("--force", action="store_true",
                   help="replace the stubs (DIR/NAME.py) already there; nothing else is touched")
    c = e.add_parser("check", help="check a solution (NAME) or every exercise (--all) with "
                     "hypothesis properties")
    c.add_argument("name", nargs="?", help="exercise name (see: minigrok exercises list)")
    c.add_argument("--all", action="store_true",
                   help="check every exercise, in teaching order: a one-line report each and "
                        "the total (exit 0 only when all pass)")
    w = c.add_mutually_exclusive_group()
    w.add_argument("--file", help="the student's file (default: lessons/exercises/NAME.py)")
    w.add_argument("--dir", metavar="DIR",
                   help="the student's folder: DIR/NAME.py (a missing file fails that exercise)")
    w.add_argument("--reference", action="store_true",
                   help="check minigrok's own implementation instead (it must pass)")
    c.add_argument("--json", action="store_true",
                   help="with --all: print one JSON array, "
                        "[{name, passed, message, seconds}, ...], and nothing else on stdout")
    c.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="time limit for each exercise's whole check (default: the exercise's, "
                        "60 s); the code checked runs in a child process that is killed at the "
                        "limit")
    s.set_defaults(func=cmd_exercises)
    return p


def main(argv=None) -> int:
    # Ctrl-C is one line and exit code 130 at any point: while the parser is built and the
    # arguments read too, and while a command imports numpy (which takes a while).
    try:
        warnings.formatwarning = lambda message, *_: f"minigrok: warning: {message}\n"
        parser = build_parser()
        args = parser.parse_args(argv)
        args.func(args)
    except MinigrokError as e:
        print(f"minigrok: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minigrok: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): flushing stdout at exit would fail again and print
        # "Exception ignored"; point it at /dev/null instead.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):        # a stdout without a descriptor (tests)
            pass
        return 0
    return 0
