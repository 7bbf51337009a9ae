"""Network definitions and the model package (model.yaml + safetensors weights)."""
