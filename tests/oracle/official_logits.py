"""Full-sequence logits from the official Grok-1 JAX code, for checking minigrok against it.

Run with the oracle venv (tests/oracle/setup_venv.sh), not the project's python:

    ~/.cache/minigrok/oracle-venv/bin/python tests/oracle/official_logits.py \
        --checkpoint DIR --tokens 5,17,0,300 --out logits.npy [--dump-params params.npz]

DIR holds ``ckpt-0/tensor{i:05d}_000`` and ``config.json`` (the hyper-parameters run.py
hard-codes). Nothing of the official code is copied here: model.py, runners.py and
checkpoint.py are imported from --src (default $GROK1_SRC or ~/.cache/minigrok/grok-1), and the
model is built, loaded and run through the same objects run.py uses. Only the last step
differs: instead of the sampling loop we ask the model for the logits of each position of one
sequence, the way the runner's prefill asks for those of the prompt's last one (see
logits_fn for why one position at a time).

--from-init skips the checkpoint and takes the official initialisation. Note that it is not
random: every official parameter is created with Constant(0), so its logits are all zero and,
since its weights are not quantized, the MoE layer passes its input through untouched. It
only proves the plumbing. --random-init SEED fills that same parameter tree with random values
(int8 weights with bfloat16 scales laid out like the released checkpoint) so the quantized
path is exercised without any checkpoint; add --dump-params to hand those weights to minigrok.

The logits are bfloat16 values (the official forward's output dtype) saved as float32.
"""

import argparse
import json
import os
import shutil
import sys
import time

CONFIG_FIELDS = (
    "vocab_size", "sequence_len", "emb_size", "key_size", "num_q_heads", "num_kv_heads",
    "num_layers", "widening_factor", "num_experts", "num_selected_experts",
    "attn_output_multiplier", "embedding_multiplier_scale", "output_multiplier_scale",
    "pad_token", "eos_token",
)

# run.py's mesh: one host, 8 devices all on the "model" axis. The official code only works
# with 8 model shards: the row-parallel weights (attention output, MoE down projection) carry
# 8 blocks of scales, and `weight * scales` broadcasts only inside a shard_map where each of
# the 8 shards sees one block. On a CPU we get 8 devices by asking XLA to emulate them.
LOCAL_MESH = (1, 8)
BETWEEN_HOSTS = (1, 1)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="folder with config.json and ckpt-0/")
    p.add_argument("--tokens", required=True, help="comma-separated token ids; 0 is pad")
    p.add_argument("--out", required=True, help="where to save float32 logits [T, vocab]")
    p.add_argument("--src", default=os.environ.get(
        "GROK1_SRC", os.path.expanduser("~/.cache/minigrok/grok-1")),
        help="folder with the official model.py, runners.py, checkpoint.py")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--from-init", action="store_true",
                      help="use the official (all-zero) initialisation instead of ckpt-0/")
    init.add_argument("--random-init", type=int, metavar="SEED",
                      help="random int8/bf16 parameters in the official tree instead of ckpt-0/")
    p.add_argument("--float32", action="store_true",
                   help="diagnostic: run activations in float32 instead of run.py's bfloat16")
    p.add_argument("--dump-params", metavar="FILE.npz",
                   help="also save the parameters the forward used, by official name")
    return p.parse_args()


def read_config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    missing = [k for k in CONFIG_FIELDS if k not in cfg]
    if missing:
        sys.exit(f"config.json lacks {', '.join(missing)}")
    return cfg


def check_checkpoint_files(directory, num_params):
    """Fail early and clearly where the official loader would fail late or not at all."""
    ckpt = os.path.join(directory, "ckpt-0")
    # The official loader reads tensor i into the i-th parameter and checks no shapes, so a
    # config with fewer layers than the checkpoint would silently load a scrambled model.
    names = sorted(n for n in os.listdir(ckpt) if n.startswith("tensor"))
    expected = [f"tensor{i:05d}_000" for i in range(num_params)]
    if names != expected:
        sys.exit(f"{ckpt} should hold exactly {expected[0]}..{expected[-1]} "
                 f"({num_params} files for {(num_params - 2) // 12} layers), "
                 f"found {len(names)} tensor files")
    # checkpoint.fast_unpickle copies every file to /dev/shm before unpickling it (up to 32
    # at a time), so /dev/shm must hold about the whole checkpoint.
    size = sum(os.path.getsize(os.path.join(ckpt, n)) for n in names)
    free = shutil.disk_usage("/dev/shm").free
    if free < size:
        sys.exit(f"/dev/shm has {free / 2**30:.1f} GiB free; the official loader needs "
                 f"{size / 2**30:.1f} GiB there")


def build_model_config(cfg, model_mod):
    """The same objects run.py builds for Grok-1, with our hyper-parameters."""
    return model_mod.LanguageModelConfig(
        vocab_size=cfg["vocab_size"],
        pad_token=cfg["pad_token"],
        eos_token=cfg["eos_token"],
        sequence_len=cfg["sequence_len"],
        embedding_init_scale=1.0,
        output_multiplier_scale=cfg["output_multiplier_scale"],
        embedding_multiplier_scale=cfg["embedding_multiplier_scale"],
        model=model_mod.TransformerConfig(
            emb_size=cfg["emb_size"],
            widening_factor=cfg["widening_factor"],
            key_size=cfg["key_size"],
            num_q_heads=cfg["num_q_heads"],
            num_kv_heads=cfg["num_kv_heads"],
            num_layers=cfg["num_layers"],
            attn_output_multiplier=cfg["attn_output_multiplier"],
            shard_activations=True,
            num_experts=cfg["num_experts"],
            num_selected_experts=cfg["num_selected_experts"],
            data_axis="data",
            model_axis="model",
        ),
    )


def random_params(zero_params, seed, QW8):
    """Random values in the official parameter tree, quantized like the released checkpoint.

    Embedding, norm scales and router stay float32; every other weight becomes int8 times
    bfloat16 scales, one scale per output column, except the row-parallel weights (attention
    output `linear`, MoE down projection `linear_1`) whose rows come in 8 blocks of scales.
    """
    import ml_dtypes
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for module, leaves in zero_params.items():
        out[module] = {}
        for name, leaf in leaves.items():
            shape = tuple(leaf.shape)
            if name == "embeddings":
                value = rng.standard_normal(shape, dtype=np.float32)
            elif name == "scale":  # RMSNorm: the scale multiplies directly
                value = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            elif module.endswith("router"):
                value = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
            else:
                fan_in = shape[-2]
                blocks = 8 if module.endswith(("multi_head_attention/linear", "moe/linear_1")) else 1
                weight = rng.integers(-127, 128, size=shape, dtype=np.int8)
                # int8 uniform on [-127, 127] has std ~73; aim for std(W) ~ 1/sqrt(fan_in).
                scales_shape = shape[:-2] + (blocks, shape[-1])
                scales = rng.uniform(0.5, 1.5, scales_shape) / (73.3 * np.sqrt(fan_in))
                value = QW8(weight, scales.astype(ml_dtypes.bfloat16))
            out[module][name] = value
    return out


def logits_fn(lm_config, mesh, params_sharding):
    """fn(params, tokens [1, T]) -> logits [T, V]: the official model called as the runner
    calls it, pjit with the partition rules' parameter sharding and LanguageModel(tokens,
    length=t + 1) for the row of position t, for every t in one compiled loop.

    Why one row at a time: under jaxlib 0.4.25 (XLA:CPU built with oneDNN) the bfloat16
    whole-sequence forward fails to compile on CPUs where oneDNN has bf16 matmuls (e.g.
    avx512_bf16): "unsupported operand type BF16 in op dot". XLA widens bf16 dots to float32
    (its dot emitter has no bf16) except those oneDNN's rewriter claims: the decode
    [T, D/8] x [D/8, V] per device once large enough (T >= 4 on the tiny preset); transpose
    folding then makes it one the rewriter declines, and it reaches the emitter in bf16.
    Sharding plays no part (jit and pjit compile the same 8-way program and fail alike).
    A one-row decode is a vector-matrix product oneDNN never claims, so it is widened like
    every other dot; the runner never asks for more. Details in README.md.
    """
    import haiku as hk
    import jax
    import jax.experimental.pjit as pjit
    import jax.numpy as jnp

    def forward(tokens, length):
        # InferenceRunner's hk_forward without a memory: lm()(tokens, None, length=length).
        return lm_config.make(mesh=mesh)(tokens, None, length=length).logits
    apply = hk.without_apply_rng(hk.transform(forward)).apply

    def every_position(params, tokens):
        # One loop, not T calls: XLA hoists the transformer (the same for every length) out
        # of it, so it runs once and the loop body is the one-row decode.
        lengths = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.int32)
        return jax.lax.map(lambda n: apply(params, tokens, n[None])[0, 0], lengths)
    return pjit.pjit(every_position, in_shardings=(params_sharding, None))


def flatten_params(params, QW8):
    """{'module/param': array}; a quantized weight gives '.../weight' (int8), '.../scales' (f32)."""
    import numpy as np

    flat = {}
    for module, leaves in params.items():
        for name, leaf in leaves.items():
            key = f"{module}/{name}"
            if isinstance(leaf, QW8):
                flat[f"{key}/weight"] = np.asarray(leaf.weight)
                flat[f"{key}/scales"] = np.asarray(leaf.scales).astype(np.float32)
            else:
                flat[key] = np.asarray(leaf)
    return flat


def main():
    args = parse_args()
    t0 = time.time()
    cfg = read_config(args.checkpoint)
    tokens = [int(t) for t in args.tokens.split(",")]

    # Must be set before jax is imported: the device count is fixed when the backend starts.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.abspath(args.src))

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    import model as official_model  # the official model.py, from --src
    import runners as official_runners  # imports checkpoint.py, which registers
    # __main__.QuantizedWeight8bit so that pickle finds the class the checkpoint names.

    assert jax.device_count() == 8, jax.devices()
    QW8 = official_model.QuantizedWeight8bit

    lm_config = build_model_config(cfg, official_model)
    runner = official_runners.ModelRunner(
        model=lm_config,
        bs_per_device=0.125,
        checkpoint_path=args.checkpoint,
    )
    # As InferenceRunner.initialize does: haiku-transform the forward so that the runner can
    # derive parameter shapes and shardings from it, then build the mesh.
    runner.transform_forward = True
    dummy_data = dict(inputs=np.zeros((1, 256), dtype=np.int32),
                      targets=np.zeros((1, 256), dtype=np.int32))
    runner.initialize(dummy_data, local_mesh_config=LOCAL_MESH, between_hosts_config=BETWEEN_HOSTS)

    if args.float32:
        # runner.initialize has just set bfloat16, as run.py runs. The model objects read this
        # field when the forward is traced, so overriding it here turns the activations (not
        # the bf16 dequantisation, nor the MoE's hard-coded bf16 casts) to float32. Useful to
        # separate a semantic mismatch from bfloat16 rounding: a float32 reimplementation
        # should then agree to ~1e-5 of the largest logit instead of ~1%.
        lm_config.fprop_dtype = np.float32

    from_checkpoint = not (args.from_init or args.random_init is not None)
    if from_checkpoint:
        num_params = 2 + 12 * cfg["num_layers"]
        check_checkpoint_files(args.checkpoint, num_params)
    state = runner.load_or_init(dummy_data, from_checkpoint=from_checkpoint)
    # load_or_init returns params from a checkpoint but the whole TrainingState from init.
    params = state.params if isinstance(state, official_model.TrainingState) else state
    if args.random_init is not None:
        host = random_params(jax.device_get(params), args.random_init, QW8)
        # Place them on the mesh the way checkpoint.restore places loaded tensors.
        params = multihost_utils.host_local_array_to_global_array(
            host, runner.mesh, runner.state_sharding.params)
    t_load = time.time()

    # One sequence, batch 1, exactly the given tokens (the model masks keys equal to pad),
    # one position at a time as the runner decodes (logits_fn says why).
    fn = logits_fn(lm_config, runner.mesh, runner.state_sharding.params)
    with runner.mesh:
        logits = fn(params, np.asarray([tokens], dtype=np.int32))
        logits = np.asarray(logits).astype(np.float32)
    t_fwd = time.time()

    assert logits.shape == (len(tokens), cfg["vocab_size"]), logits.shape
    np.save(args.out, logits)
    if args.dump_params:
        np.savez(args.dump_params, **flatten_params(jax.device_get(params), QW8))
    print(f"logits {logits.shape} float32 -> {args.out}; "
          f"setup+load {t_load - t0:.1f}s, compile+forward {t_fwd - t_load:.1f}s, "
          f"total {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
