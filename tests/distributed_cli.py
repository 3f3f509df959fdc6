"""`cvdm-tf` in a process with N logical CPU devices (tests/test_distribute.py): `python distributed_cli.py N ARGS`.

Logical devices must be configured before TensorFlow initialises, hence a process of its own.
"""

import sys

if __name__ == "__main__":
    import tensorflow as tf

    count = int(sys.argv[1])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    from cvdm_tf.cli.main import main

    main(sys.argv[2:])
