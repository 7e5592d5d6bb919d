"""robot_pref.eval"""
