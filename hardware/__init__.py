"""One arm interface for simulated and real arms (installed as robot_pref.hardware)."""
