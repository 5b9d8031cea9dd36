"""The oracle worker: one long-lived process running the official Grok-1 JAX code.

Started by ``harness.Oracle`` with the oracle venv's python (tests/oracle/setup_venv.sh),
never with the project's. It imports the official ``model.py``, ``runners.py`` and
``checkpoint.py`` from ``--src`` (nothing of them is copied here) and answers requests,
one JSON object per line on stdin, one JSON reply per line on stdout:

    {"op": "rms_norm", "inputs": "/tmp/x/in-3.npz", "outputs": "/tmp/x/out-3.npz", ...args}
    {"ok": true, "seconds": 0.01, ...}    or    {"ok": false, "error": "<traceback>"}

Arrays travel in .npz files. A quantised weight ``NAME`` is sent as ``NAME/weight`` (int8)
and ``NAME/scales`` (float32 values that are exact bfloat16 numbers: the worker casts them
to bfloat16, losslessly). Outputs come back as float32 (bfloat16 results widen exactly)
or int32.

Every case is computed by the official Haiku modules and functions themselves, transformed
and jitted inside the 8-device mesh run.py builds (``runners.make_mesh((1, 8), (1, 1))``,
8 emulated CPU devices): RMSNorm (``hk_rms_norm``), RotaryEmbedding, MHABlock /
MultiHeadAttention, Linear with a QuantizedWeight8bit, Router + MoELayer, DecoderLayer,
the LanguageModel loaded by ``ModelRunner.load_or_init`` (``checkpoint.restore``), its KV
memory path, the InferenceRunner sampling loop and ``top_p_filter``. The only lines that
are not official calls glue them together: the attention mask is built the way
``Transformer.__call__`` builds it (pad keys times the causal triangle), and the KV-cache
driver follows ``InferenceRunner``'s prefill-then-step sequence with teacher-forced tokens.

Compiled functions are cached by their static configuration (jax.jit caches each shape),
so hypothesis can send hundreds of cases for the price of a few compilations.
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
import traceback

# The device count is fixed when the JAX backend starts: set it before jax is imported.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("MINIGROK_ORACLE_FAST_COMPILE") == "1":
    # LLVM optimisations off: the same XLA programs compile ~4x faster and run ~2x slower,
    # the right trade when most cases need a fresh compilation (the quick profile).
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

LOCAL_MESH = (1, 8)        # run.py: one host, 8 devices on the "model" axis
BETWEEN_HOSTS = (1, 1)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="folder with the official model.py, runners.py")
    return p.parse_args()


class Worker:
    def __init__(self, src):
        sys.path.insert(0, os.path.abspath(src))
        sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
        import haiku as hk
        import jax
        import jax.numpy as jnp
        import numpy as np
        from jax.sharding import PartitionSpec as P

        import checkpoint as official_checkpoint  # registers __main__.QuantizedWeight8bit
        import model as official_model
        import runners as official_runners

        self.hk, self.jax, self.jnp, self.np, self.P = hk, jax, jnp, np, P
        self.M, self.R, self.C = official_model, official_runners, official_checkpoint
        assert jax.device_count() == 8, jax.devices()
        self.mesh = official_runners.make_mesh(LOCAL_MESH, BETWEEN_HOSTS)
        self.bf16 = jnp.bfloat16
        self._fns = {}           # (op, static config) -> jitted function
        self._models = {}        # (checkpoint, dtype) -> loaded model
        self._runners = {}       # (checkpoint, bucket, tokenizer) -> InferenceRunner session

    # ---- plumbing -----------------------------------------------------------------------

    def dtype(self, name):
        return {"float32": self.np.float32, "bfloat16": self.bf16}[name]

    def qw(self, arrays, name):
        """The official QuantizedWeight8bit for ``name`` (int8 weight, bfloat16 scales)."""
        np = self.np
        scales = arrays[name + "/scales"]
        bf = scales.astype(self.bf16)
        if not np.array_equal(bf.astype(np.float32), scales):
            raise ValueError(f"{name}/scales are not exact bfloat16 values")
        return self.M.QuantizedWeight8bit(arrays[name + "/weight"].astype(np.int8), bf)

    def jitted(self, key, build):
        """A cached ``jax.jit(hk.transform(f).apply)`` (build() returns f)."""
        if key not in self._fns:
            hk = self.hk
            self._fns[key] = self.jax.jit(hk.without_apply_rng(hk.transform(build())).apply)
        return self._fns[key]

    def run(self, key, build, params, *args):
        fn = self.jitted(key, build)
        with self.mesh:
            out = fn(params, *args)
        return self.jax.device_get(out)

    def f32(self, x):
        return self.np.asarray(x).astype(self.np.float32)

    def official_mask(self, tokens, dtype, pad_token=0):
        """Pad keys times the causal triangle, as LanguageModel + Transformer.__call__ build it.

        tokens: [B, T] -> mask [B, 1, T, T] (1 = may attend).
        """
        jnp = self.jnp
        input_mask = jnp.greater(tokens, pad_token)
        T = tokens.shape[1]
        causal = jnp.tril(jnp.ones((1, 1, T, T))).astype(dtype)
        return input_mask[:, None, None, :] * causal

    # ---- components ---------------------------------------------------------------------

    def op_rms_norm(self, req, a):
        """x [B, T, D] (float32 or bfloat16), scale [D] -> official RMSNorm output."""
        x = a["x"].astype(self.dtype(req["dtype"]))
        y = self.run(("rms_norm",), lambda: lambda x: self.M.hk_rms_norm(x),
                     {"rms_norm": {"scale": a["scale"]}}, x)
        return {"y": self.f32(y)}, {"dtype": str(y.dtype)}

    def op_rope(self, req, a):
        """x [B, T, N, d], offset [B] int -> RotaryEmbedding(d)(x, seq_dim=1, offset)."""
        x = a["x"].astype(self.dtype(req["dtype"]))
        d = x.shape[-1]

        def build():
            def f(x, offset):
                return self.M.RotaryEmbedding(dim=d, base_exponent=int(1e4))(
                    x, seq_dim=1, offset=offset)
            return f
        y = self.run(("rope", d), build, {}, x, a["offset"].astype(self.np.int32))
        return {"y": self.f32(y)}, {}

    def op_linear(self, req, a):
        """The official Linear holding a QuantizedWeight8bit (dequantised inside its shard_map).

        Returns y = Linear(x) and W = Linear(identity): the dequantised weight as the
        official code forms it, read back exactly through an identity input.
        """
        np = self.np
        w = self.qw(a, "w")
        n_in, n_out = w.weight.shape
        # Column-parallel weights (query/key/value, expert up-projections) are sharded
        # P("data", "model"); row-parallel ones (attention output, expert down-projection)
        # P("model", "data"), so each of the 8 shards meets its own block of scales.
        spec = self.P("model", "data") if req["row_parallel"] else self.P("data", "model")
        dt = self.dtype(req["dtype"])

        def build():
            def f(x):
                return self.M.Linear(n_out, with_bias=False, sharding=spec, mesh=self.mesh,
                                     name="linear")(x)
            return f
        key = ("linear", n_out, req["row_parallel"])
        params = {"linear": {"w": w}}
        y = self.run(key, build, params, a["x"].astype(dt))
        W = self.run(key, build, params, np.eye(n_in, dtype=np.float32).astype(dt))
        return {"y": self.f32(y), "W": self.f32(W)}, {}

    def _moe_module(self, widening_factor):
        """Router + MoELayer(DenseBlock), built as DecoderLayer builds them."""
        M, mesh = self.M, self.mesh
        router = M.Router(num_selected_experts=2, shard_activations=True, data_axis="data",
                          model_axis="model", mesh=mesh)

        def base_dense_block(h):
            # num_q_heads etc. are unused by DenseBlock; DecoderLayer passes its own.
            return M.DenseBlock(num_q_heads=1, num_kv_heads=1, key_size=1,
                                widening_factor=widening_factor, sharding_constraint=False,
                                mesh=mesh)(h)
        moe = M.MoELayer(num_experts=8, mesh=mesh, layer_fn=base_dense_block, router=router,
                         shard_activations=True, data_axis="data", model_axis="model")
        return router, moe

    def op_moe(self, req, a):
        """x [1, T, D] -> MoELayer output [1, T, D], routing probs [1, T, 8], top-2 ids."""
        x = a["x"].astype(self.dtype(req["dtype"]))
        wf = req["widening_factor"]

        def build():
            def f(x):
                router, moe = self._moe_module(wf)
                out = moe(x, None)
                probs, _, _ = router.compute_routing_prob(x, None, 8)
                # The same call MoELayer makes on these probabilities.
                gates, index = self.jax.lax.top_k(probs, k=router.num_selected_experts)
                return out, probs, gates, index
            return f
        params = {"router": {"w": a["router"]},
                  **{f"moe/{n}": {"w": self.qw(a, n)} for n in ("linear", "linear_v", "linear_1")}}
        out, probs, gates, index = self.run(("moe", wf), build, params, x)
        return {"out": self.f32(out), "probs": self.f32(probs), "gates": self.f32(gates),
                "index": self.np.asarray(index, dtype=self.np.int32)}, {}

    def _layer_params(self, a, prefix):
        params = {f"{prefix}router": {"w": a["router"]}}
        for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
            params[f"{prefix}{n}"] = {"scale": a[n]}
        for n in ("query", "key", "value", "linear"):
            params[f"{prefix}multi_head_attention/{n}"] = {"w": self.qw(a, n)}
        for n in ("linear", "linear_v", "linear_1"):
            params[f"{prefix}moe/{n}"] = {"w": self.qw(a, "moe_" + n)}
        return params

    def op_attention(self, req, a):
        """MHABlock(x) with the official pad + causal mask: x [1, T, D], tokens [1, T]."""
        x = a["x"].astype(self.dtype(req["dtype"]))
        H, K, d, mult = req["num_q_heads"], req["num_kv_heads"], req["key_size"], req["multiplier"]

        def build():
            def f(x, tokens):
                mask = self.official_mask(tokens, x.dtype)
                return self.M.MHABlock(num_q_heads=H, num_kv_heads=K, key_size=d,
                                       attn_output_multiplier=mult, mesh=self.mesh,
                                       data_axis="data", model_axis="model")(
                    x, mask, None).embeddings
            return f
        params = {f"multi_head_attention/{n}": {"w": self.qw(a, n)}
                  for n in ("query", "key", "value", "linear")}
        y = self.run(("attention", H, K, d, mult), build, params, x, a["tokens"])
        return {"y": self.f32(y)}, {}

    def op_decoder_layer(self, req, a):
        """One official DecoderLayer: x [1, T, D], tokens [1, T] (pads = 0) -> [1, T, D]."""
        x = a["x"].astype(self.dtype(req["dtype"]))
        H, K, d, mult = req["num_q_heads"], req["num_kv_heads"], req["key_size"], req["multiplier"]
        wf = req["widening_factor"]

        def build():
            def f(x, tokens):
                mask = self.official_mask(tokens, x.dtype)
                return self.M.DecoderLayer(
                    num_q_heads=H, num_kv_heads=K, key_size=d, num_layers=1, num_experts=8,
                    num_selected_experts=2, widening_factor=wf, mesh=self.mesh,
                    data_axis="data", model_axis="model", shard_activations=True,
                    attn_output_multiplier=mult, name="decoder_layer_0")(
                    x, mask, tokens > 0, None).embeddings
            return f
        y = self.run(("decoder_layer", H, K, d, mult, wf), build,
                     self._layer_params(a, "decoder_layer_0/"), x, a["tokens"])
        return {"y": self.f32(y)}, {}

    def op_top_p(self, req, a):
        """runners.top_p_filter(logits [B, V], top_p [B, 1])."""
        fn = self._fns.setdefault(("top_p",), self.jax.jit(self.R.top_p_filter))
        out = fn(a["logits"].astype(self.np.float32), a["top_p"].astype(self.np.float32))
        return {"out": self.f32(out)}, {}

    # ---- whole model --------------------------------------------------------------------

    def lm_config(self, cfg):
        """The objects run.py builds, with a checkpoint's config.json values."""
        M = self.M
        return M.LanguageModelConfig(
            vocab_size=cfg["vocab_size"], pad_token=cfg["pad_token"], eos_token=cfg["eos_token"],
            sequence_len=cfg["sequence_len"], embedding_init_scale=1.0,
            output_multiplier_scale=cfg["output_multiplier_scale"],
            embedding_multiplier_scale=cfg["embedding_multiplier_scale"],
            model=M.TransformerConfig(
                emb_size=cfg["emb_size"], widening_factor=cfg["widening_factor"],
                key_size=cfg["key_size"], num_q_heads=cfg["num_q_heads"],
                num_kv_heads=cfg["num_kv_heads"], num_layers=cfg["num_layers"],
                attn_output_multiplier=cfg["attn_output_multiplier"], shard_activations=True,
                num_experts=cfg["num_experts"], num_selected_experts=cfg["num_selected_experts"],
                data_axis="data", model_axis="model"))

    def model(self, checkpoint):
        """A checkpoint loaded exactly as run.py loads it: ModelRunner.load_or_init."""
        if checkpoint in self._models:
            return self._models[checkpoint]
        np = self.np
        with open(os.path.join(checkpoint, "config.json")) as f:
            cfg = json.load(f)
        lm_config = self.lm_config(cfg)
        runner = self.R.ModelRunner(model=lm_config, bs_per_device=0.125,
                                    checkpoint_path=checkpoint)
        runner.transform_forward = True       # as InferenceRunner.initialize
        dummy = dict(inputs=np.zeros((1, 256), dtype=np.int32),
                     targets=np.zeros((1, 256), dtype=np.int32))
        runner.initialize(dummy, local_mesh_config=LOCAL_MESH, between_hosts_config=BETWEEN_HOSTS)
        params = runner.load_or_init(dummy)     # checkpoint.restore
        # The float32 diagnostic: the same model with fprop_dtype float32 (runner.initialize
        # has just set bfloat16, as run.py runs). Activations go float32; the bfloat16 casts
        # the MoE hard-codes and the bfloat16 dequantisation stay.
        lm32 = dataclasses.replace(lm_config, fprop_dtype=np.float32).initialize()
        m = {"cfg": cfg, "runner": runner, "params": params,
             "lm": {"bfloat16": lm_config, "float32": lm32}}
        self._models[checkpoint] = m
        return m

    def op_logits(self, req, a):
        """Full-sequence logits [T, V] of the official LanguageModel on one sequence."""
        m = self.model(req["checkpoint"])
        dt = req["dtype"]
        tokens = a["tokens"].astype(self.np.int32)[None]
        if dt == "bfloat16":
            return {"logits": self.f32(self._bf16_logits(req["checkpoint"], m, tokens))}, {}
        lm = m["lm"][dt]
        fn = self.jitted(("logits", req["checkpoint"], dt),
                         lambda: lambda t: lm.make(mesh=self.mesh)(t).logits)
        with self.mesh:
            logits = fn(m["params"], tokens)
        return {"logits": self.f32(logits)[0]}, {}

    def _bf16_logits(self, checkpoint, m, tokens):
        """Exactly official_logits.py's call: the runner's pjit and one-row decode
        (``length``), at every position. A bfloat16 full-sequence forward does not compile
        on every x86-64 CPU under jaxlib 0.4.25 (official_logits.logits_fn says why)."""
        import official_logits
        key = ("logits", checkpoint, "bfloat16")
        if key not in self._fns:
            self._fns[key] = official_logits.logits_fn(
                m["lm"]["bfloat16"], self.mesh, m["runner"].state_sharding.params)
        with self.mesh:
            return self._fns[key](m["params"], tokens)

    def op_params(self, req, a):
        """Every parameter checkpoint.restore loaded, by official name (int8 + scales split)."""
        np = self.np
        m = self.model(req["checkpoint"])
        flat = {}
        host = self.jax.device_get(m["params"])
        for module, leaves in host.items():
            for name, leaf in leaves.items():
                key = f"{module}/{name}"
                if isinstance(leaf, self.M.QuantizedWeight8bit):
                    flat[key + "/weight"] = self.np.asarray(leaf.weight)
                    flat[key + "/scales"] = self.f32(leaf.scales)
                    assert leaf.scales.dtype == self.bf16, (key, leaf.scales.dtype)
                else:
                    flat[key] = self.np.asarray(leaf)
        # checkpoint.restore gives file i to the i-th leaf of the initial state's shapes.
        runner = m["runner"]
        dummy = dict(inputs=np.zeros((1, 256), dtype=np.int32),
                     targets=np.zeros((1, 256), dtype=np.int32))
        with runner.mesh:
            shapes = self.jax.eval_shape(runner.init_fn, self.jax.random.PRNGKey(0), dummy)
        order = [self.C.path_tuple_to_string(p) for p, _ in
                 self.jax.tree_util.tree_flatten_with_path(shapes.params)[0]]
        return flat, {"flatten_order": order}

    def op_decode(self, req, a):
        """The official KV-memory path, teacher-forced, as InferenceRunner drives it.

        Prefill: the prompt [P] through the LanguageModel with a fresh memory of P slots
        and ``length`` = P (logits of the last prompt position); the memory's step is set to
        P and it is padded to ``memory_len`` slots (prefill_memory's step override and
        pad_to_max_len). Then one call per continuation token, [1, 1] with the memory, as
        sample_step does. Returns logits [1 + n, V]: after the prompt and after each token.
        """
        np, jnp, M = self.np, self.jnp, self.M
        m = self.model(req["checkpoint"])
        cfg, dt = m["cfg"], req["dtype"]
        lm = m["lm"][dt]
        fprop = self.dtype(dt)
        prompt = a["prompt"].astype(np.int32)
        P, S = len(prompt), req["memory_len"]

        fn = self.jitted(("decode", req["checkpoint"], dt),
                         lambda: lambda t, mem, length: lm.make(mesh=self.mesh)(
                             t, mem, length=length))

        def memory(size):
            # The official helper behind Transformer.init_memory; in the float32 diagnostic
            # the memory is float32 too (run.py's is bfloat16, like its activations).
            return M.Memory(layers=M.init_layer_memories(
                1, size, cfg["num_kv_heads"], cfg["key_size"], cfg["num_layers"],
                step=jnp.zeros(1, dtype=jnp.int32), dtype=fprop))

        out_logits = []
        with self.mesh:
            out = fn(m["params"], prompt[None], memory(P), np.asarray([P], np.int32))
            out_logits.append(self.f32(out.logits)[0, -1])
            mem = out.model_state
            mem = mem._replace(layers=[
                layer._replace(k=jnp.pad(layer.k, [(0, 0), (0, S - P), (0, 0), (0, 0)]),
                               v=jnp.pad(layer.v, [(0, 0), (0, S - P), (0, 0), (0, 0)]),
                               step=jnp.array([P], dtype=jnp.int32))
                for layer in mem.layers])
            for token in a["tokens"].astype(np.int32):
                out = fn(m["params"], np.asarray([[token]], np.int32), mem, None)
                out_logits.append(self.f32(out.logits)[0, -1])
                mem = out.model_state
        return {"logits": np.stack(out_logits)}, {}

    def op_generate(self, req, a):
        """Text in, tokens out, through the official InferenceRunner (run.py's loop).

        One runner per (checkpoint, pad bucket, tokenizer), initialised and compiled once;
        each request is sample_from_model's next/send pair with our temperature and seed.
        The runner's tokenizer is wrapped to record the ids it encodes and decodes, so the
        token ids (not only the decoded text) come back.
        """
        key = (req["checkpoint"], req["pad_bucket"], req["tokenizer"], req["dtype"])
        if key not in self._runners:
            self._runners[key] = self._new_inference_runner(*key)
        session = self._runners[key]
        rec = session["recorder"]
        rec.encoded, rec.decoded = None, None
        gen = session["gen"]
        next(gen)
        text = gen.send(self.R.Request(prompt=req["prompt"], temperature=req["temperature"],
                                       nucleus_p=req["nucleus_p"], rng_seed=req["seed"],
                                       max_len=req["max_len"]))
        np = self.np
        return ({"prompt": np.asarray(rec.encoded, np.int32),
                 "tokens": np.asarray(rec.decoded, np.int32)}, {"text": text})

    def _new_inference_runner(self, checkpoint, bucket, tokenizer, dtype):
        with open(os.path.join(checkpoint, "config.json")) as f:
            cfg = json.load(f)
        lm_config = self.lm_config(cfg)
        runner = self.R.InferenceRunner(
            pad_sizes=(bucket,),
            runner=self.R.ModelRunner(model=lm_config, bs_per_device=0.125,
                                      checkpoint_path=checkpoint),
            name="local", load=checkpoint, tokenizer_path=tokenizer,
            local_mesh_config=LOCAL_MESH, between_hosts_config=BETWEEN_HOSTS)
        if dtype == "float32":
            self._float32_inference(runner)
        runner.initialize()
        recorder = _Recorder(runner.tokenizer)
        runner.tokenizer = recorder
        gen = runner.run()
        return {"runner": runner, "gen": gen, "recorder": recorder}

    def _float32_inference(self, runner):
        """Diagnostic only: make an InferenceRunner run its activations and KV memory in
        float32 instead of run.py's bfloat16. Call before runner.initialize().

        ModelRunner.initialize sets fprop_dtype to bfloat16, and InferenceRunner.initialize
        builds (and caches) its model right after that, so the field is set back to float32
        as ModelRunner.initialize returns. The KV memory comes from LanguageModel.init_memory,
        whose dtype defaults to bfloat16: the models this config makes default to float32.
        run() keeps the reported probabilities (SampleOutput.prob, top_k_probs) in bfloat16
        arrays, so sample_token hands them over in bfloat16; the chosen token is untouched.
        """
        np = self.np
        model_runner, lm_config = runner.runner, runner.runner.model
        initialize, make = model_runner.initialize, lm_config.make

        def initialize_float32(*args, **kwargs):
            initialize(*args, **kwargs)
            lm_config.fprop_dtype = np.float32

        def make_float32(*args, **kwargs):
            lm = make(*args, **kwargs)
            lm.init_memory = functools.partial(type(lm).init_memory, lm, dtype=np.float32)
            return lm
        model_runner.initialize = initialize_float32
        lm_config.make = make_float32
        if not hasattr(self.R.sample_token, "official"):
            sample_token, bf16 = self.R.sample_token, self.bf16

            def sample_token_bf16_probs(rngs, lm_outputs, settings):
                out = sample_token(rngs, lm_outputs, settings)
                return out._replace(prob=out.prob.astype(bf16),
                                    top_k_probs=out.top_k_probs.astype(bf16))
            sample_token_bf16_probs.official = sample_token
            self.R.sample_token = sample_token_bf16_probs

    def op_write_official(self, req, a):
        """Write a checkpoint with the official writer, checkpoint.fast_pickle.

        The parameters are random values in the official parameter tree (int8 weights with
        bfloat16 scales laid out like the release, official_logits.random_params); file i
        holds the i-th leaf of the tree in jax's flatten order, each pickled as the release
        files are: ``__main__.QuantizedWeight8bit`` holding numpy arrays.
        """
        import official_logits
        np, jax, M = self.np, self.jax, self.M
        cfg = req["config"]
        lm_config = self.lm_config(cfg)
        runner = self.R.ModelRunner(model=lm_config, bs_per_device=0.125, checkpoint_path="")
        runner.transform_forward = True
        dummy = dict(inputs=np.zeros((1, 256), dtype=np.int32),
                     targets=np.zeros((1, 256), dtype=np.int32))
        runner.initialize(dummy, local_mesh_config=LOCAL_MESH, between_hosts_config=BETWEEN_HOSTS)
        with runner.mesh:
            shapes = jax.eval_shape(runner.init_fn, jax.random.PRNGKey(0), dummy).params
        zeros = {mod: {n: np.zeros(s.shape, s.dtype) for n, s in leaves.items()}
                 for mod, leaves in shapes.items()}
        params = official_logits.random_params(zeros, req["seed"], M.QuantizedWeight8bit)
        ckpt = os.path.join(req["out"], "ckpt-0")
        os.makedirs(ckpt, exist_ok=True)
        leaves = jax.tree_util.tree_flatten(
            params, is_leaf=lambda x: isinstance(x, M.QuantizedWeight8bit))[0]
        # The release was pickled from a __main__ script; checkpoint.py puts the class
        # there for unpickling, we name it there for pickling.
        saved = M.QuantizedWeight8bit.__module__
        M.QuantizedWeight8bit.__module__ = "__main__"
        try:
            for i, leaf in enumerate(leaves):
                self.C.fast_pickle(leaf, os.path.join(ckpt, f"tensor{i:05d}_000"))
        finally:
            M.QuantizedWeight8bit.__module__ = saved
        with open(os.path.join(req["out"], "config.json"), "w") as f:
            json.dump(cfg, f)
        flat = official_logits.flatten_params(params, M.QuantizedWeight8bit)
        return flat, {"files": len(leaves)}

    def op_ping(self, req, a):
        return {}, {"jax": self.jax.__version__, "devices": self.jax.device_count()}


class _Recorder:
    """Wraps the runner's SentencePiece processor, keeping the last ids in and out."""

    def __init__(self, sp):
        self.sp, self.encoded, self.decoded = sp, None, None

    def encode(self, text):
        self.encoded = list(self.sp.encode(text))
        return self.encoded

    def decode(self, ids):
        self.decoded = list(ids)
        return self.sp.decode(ids)


def main():
    args = parse_args()
    # The protocol owns the real stdout; anything else printed (by jax, haiku, the official
    # code's loggers) goes to stderr, which the harness keeps in a log file.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(args.src)
    import numpy as np
    proto.write(json.dumps({"ok": True, "ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        t0 = time.perf_counter()
        try:
            req = json.loads(line)
            arrays = {}
            if req.get("inputs"):
                with np.load(req["inputs"]) as z:
                    arrays = {k: z[k] for k in z.files}
            outputs, info = getattr(worker, "op_" + req["op"])(req, arrays)
            if req.get("outputs"):
                tmp = req["outputs"] + ".partial.npz"
                np.savez(tmp, **outputs)
                os.replace(tmp, req["outputs"])
            reply = {"ok": True, **info}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        reply["seconds"] = round(time.perf_counter() - t0, 4)
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
