"""What `ops run` can launch: trainer specs (NeMo RL, the embedded GRPO workload) and the workload itself."""
