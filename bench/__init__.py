"""The performance benchmark of issue 7: bare MLflow serving against the Lungwatch path."""
