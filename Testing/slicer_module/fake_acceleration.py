"""A stand-in for ``python -m MRtoCTSynthesisLib.acceleration --json`` (the speed helper's contract): prints what a
machine with one CUDA GPU would answer, with a log line before it, as the real command may."""
import json
import sys

if __name__ == "__main__":
    assert sys.argv[1:] == ["--json"], sys.argv
    print("probing devices...", file=sys.stderr)
    print(json.dumps({"cpu": {"model": "test CPU", "flags": ["avx2"]}, "devices": ["cpu", "cuda:0"],
                      "auto": {"cpu": {"precision": "float32", "backend": "eager", "reason": "no fast half on CPU"},
                               "cuda:0": {"precision": "bfloat16", "backend": "cudnn",
                                          "reason": "bfloat16 tensor cores"}}}), flush=True)
