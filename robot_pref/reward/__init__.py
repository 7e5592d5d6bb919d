"""robot_pref.reward"""
