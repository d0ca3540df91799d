"""riad-edge: watch a camera, score every frame with a RIAD model, publish defects over MQTT.

Nothing in this package imports torch or the trainer: a Jetson runs it with TensorRT,
any other machine with ONNX Runtime on the CPU.
"""
