"""The gguf target's steps: Gemma 3 as GGUF for llama.cpp and what is built on it (Ollama, LM Studio).
Owns the pinned llama.cpp converter taken from the llama-cpp-python source distribution (converter.py),
the text and mmproj conversion (convert.py), llama.cpp's own K-quants (quantize.py), parity through
llama.cpp against PyTorch (parity.py), the Ollama Modelfile (modelfile.py) and the child process they
run heavy work in (worker.py). At module level these import only modelforge.steps.base, errors, store,
hashing and the standard library; torch, transformers and llama_cpp are imported inside functions of
the worker, never in modelforge's own process."""
