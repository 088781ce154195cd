"""VGG-19 on the run's device: features through onnxruntime, the deconvolution
sub-networks with their buffers and CUDA graphs, and deconvolving only what changed."""
