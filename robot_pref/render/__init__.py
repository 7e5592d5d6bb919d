"""robot_pref.render"""
