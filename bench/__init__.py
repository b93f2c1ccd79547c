"""The performance benchmark (issues 7 and 11): Lungwatch against bare MLflow and BentoML."""
