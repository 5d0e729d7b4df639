"""Steps that work on a Hugging Face checkpoint's files without a model toolchain: rename and drop
weights (transform_weights), rewrite config.json (rewrite_config), carry files (carry_files),
check the result against its architecture (check_architecture) and assemble a target (assemble).
They import safetensors_io, transforms and the step base, never torch at module level."""
