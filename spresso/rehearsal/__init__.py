"""`make rehearsal`: the paper's topology on one machine (local S3, an MLflow server with auth, an autoscaling Ray cluster)."""
