"""The export stage: the IR and trained weights as ONNX, cross-checked against onnxruntime;
quantization, model card and golden bundle."""
