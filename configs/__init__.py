"""Default TOML configs, one per task (read with cvdm_tf.config.load_config)."""
