"""The PyTorch reference every parity gate compares with: one step (parity_reference) computes the
source model's outputs on the parity prompts and test cards once, and every target's parity step
reads them instead of loading the model again. Its job runs in `worker`."""
