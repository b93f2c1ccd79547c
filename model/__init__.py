"""Model package: training, the pyfunc wrapper, and the instrumented MLflow model server."""
