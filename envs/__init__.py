"""Simulated tasks (installed as robot_pref.envs)."""
