"""Where frames come from: cameras, streams, video files, image folders, GStreamer pipelines."""
