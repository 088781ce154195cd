"""The compute device and its plumbing: device selection and memory, stage timing,
launch queues and CUDA graph capture, cuBLAS on a capturing stream."""
