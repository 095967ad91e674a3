"""Synthetic sources of the signals that cannot be recorded here: clips of a camera moving over
still images with its motor signal (motion.py), and a 2-D physics world in which an agent pushes,
pokes and grasps objects (interaction.py). Both are deterministic under a seed."""
