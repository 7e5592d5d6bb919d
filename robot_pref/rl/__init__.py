"""robot_pref.rl"""
