"""robot_pref.feedback"""
