"""Reading VGG-19 weights from known sources and exporting the ONNX feature model."""
