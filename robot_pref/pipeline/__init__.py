"""robot_pref.pipeline"""
