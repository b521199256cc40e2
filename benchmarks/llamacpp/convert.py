#!/usr/bin/env python3
"""Run llama.cpp's convert_hf_to_gguf.py on a make_random_hf.py checkpoint, unmodified
except for two run-time patches (no llama.cpp file is edited):

1. The pre-tokenizer name is forced to "lfm2". The converter identifies a BPE
   pre-tokenizer by hashing how the tokenizer splits a test string; our
   self-trained tokenizer has no known hash, so the converter would stop.
   `TextModel.get_vocab_base_pre` is replaced by one that returns "lfm2", the
   name the published LFM2 GGUFs carry.

2. `--synthetic-weights` (optional): instead of reading safetensors shards, the
   converter is handed lazy tensors that make_random_hf.make_tensor generates on
   demand -- the same names, shapes, dtypes and seeds the shards would hold, so
   the GGUF is the one a written checkpoint would give. Used for LFM2-24B-A2B,
   whose ~48 GB bf16 checkpoint does not fit on the disk next to its GGUF.

3. `--direct-q4_0` (optional): write the Q4_0 file straight away instead of a
   q8_0 file for llama-quantize. Every tensor the converter would quantize is
   quantized to Q4_0 and the (tied) token embedding to Q6_K -- exactly the types
   `llama-quantize ... Q4_0` picks for LFM2-MoE (checked against the 8B file
   made that way) -- by calling ggml's own `ggml_quantize_chunk` from
   build/bin/libggml-base.so (the function llama-quantize calls), and
   general.file_type says MOSTLY_Q4_0. This skips the ~25 GB q8_0 intermediate
   of LFM2-24B-A2B. Give `--outtype q8_0` with it (the converter's CLI has no q4_0).

Usage (all other arguments go to convert_hf_to_gguf.py):
  python convert.py HF_DIR --outtype q8_0 --outfile OUT.gguf [--synthetic-weights] [--direct-q4_0]
Environment: LLAMA_CPP_DIR (default /work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LLAMA_CPP_DIR = Path(os.environ.get("LLAMA_CPP_DIR", "/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp"))


def main() -> None:
    argv = sys.argv[1:]
    synthetic = "--synthetic-weights" in argv
    direct_q4_0 = "--direct-q4_0" in argv
    argv = [a for a in argv if a not in ("--synthetic-weights", "--direct-q4_0")]

    sys.path.insert(0, str(LLAMA_CPP_DIR))
    sys.path.insert(0, str(HERE))
    import convert_hf_to_gguf  # noqa: E402  (puts llama.cpp's own gguf-py on sys.path)
    from conversion import LazyTorchTensor, ModelBase, TextModel, logger  # noqa: E402

    def get_vocab_base_pre(self, tokenizer) -> str:  # noqa: ARG001
        logger.info("tokenizer.ggml.pre forced to 'lfm2' (benchmarks/llamacpp/convert.py)")
        return "lfm2"

    TextModel.get_vocab_base_pre = get_vocab_base_pre

    if synthetic:
        import make_random_hf as mrh
        import torch

        def index_tensors(self, remote_hf_model_id=None):  # noqa: ARG001
            cfg = json.loads((Path(self.dir_model) / "config.json").read_text())
            seed = int(cfg.get("random_weights_seed", 0))
            tensors = {}
            for spec in mrh.tensor_specs(cfg):
                # a fresh lazy tensor per call, like the safetensors loader: a lazy tensor keeps
                # its data once evaluated, so a shared one would pin every generated tensor in RAM
                def gen(spec=spec):
                    dtype = torch.bfloat16 if spec[2] == "BF16" else torch.float32
                    meta = LazyTorchTensor.meta_with_dtype_and_shape(dtype, spec[1])
                    return LazyTorchTensor(meta=meta, args=(spec,), func=lambda s: mrh.make_tensor(s, seed))

                if item := self.filter_tensors((spec[0], gen)):
                    tensors[item[0]] = item[1]
            logger.info(f"synthetic weights: {len(tensors)} tensors generated on the fly (seed {seed})")
            return tensors

        ModelBase.index_tensors = index_tensors
        torch.set_num_threads(1)

    if direct_q4_0:
        _patch_direct_q4_0(ModelBase, logger)

    sys.argv = [str(LLAMA_CPP_DIR / "convert_hf_to_gguf.py"), *argv]
    convert_hf_to_gguf.main()


def _patch_direct_q4_0(ModelBase, logger) -> None:
    import ctypes

    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    lib = ctypes.CDLL(str(LLAMA_CPP_DIR / "build" / "bin" / "libggml-base.so"))
    fn = lib.ggml_quantize_chunk
    fn.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    fn.restype = ctypes.c_size_t

    def quantize_rows(cls, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n_per_row = rows.shape[-1]
        nrows = rows.size // n_per_row
        out = np.empty(gguf.quant_shape_to_byte_shape(rows.shape, cls.qtype), dtype=np.uint8)
        n = fn(int(cls.qtype), rows.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, None)
        assert n == out.nbytes, (n, out.nbytes)
        return out

    for qt in (Q.Q4_0, Q.Q6_K):
        gguf.quants._type_traits[qt].quantize_rows = classmethod(quantize_rows)

    orig_force = ModelBase.tensor_force_quant

    def tensor_force_quant(self, name, new_name, bid, n_dims):
        r = orig_force(self, name, new_name, bid, n_dims)
        if r is not False:
            return r
        # what the converter keeps in F32 for this architecture (see ModelBase.prepare_tensors)
        if n_dims <= 1 or new_name.endswith("_norm.weight") or new_name[-7:] != ".weight":
            return False
        for key in (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.SHORTCONV_CONV, gguf.MODEL_TENSOR.POS_EMBD):
            if self.match_model_tensor_name(new_name, key, bid):
                return False
        if self.match_model_tensor_name(new_name, gguf.MODEL_TENSOR.TOKEN_EMBD, None):
            return Q.Q6_K  # llama-quantize: tied embedding = output tensor -> Q6_K
        return Q.Q4_0

    ModelBase.tensor_force_quant = tensor_force_quant

    orig_add_file_type = gguf.GGUFWriter.add_file_type

    def add_file_type(self, ftype):  # noqa: ARG001
        orig_add_file_type(self, gguf.LlamaFileType.MOSTLY_Q4_0)

    gguf.GGUFWriter.add_file_type = add_file_type
    logger.info("direct Q4_0: 2-D weights -> Q4_0, token_embd -> Q6_K via ggml_quantize_chunk")


if __name__ == "__main__":
    main()
