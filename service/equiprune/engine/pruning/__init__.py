"""Pruning: masks, magnitude and N:M selection, schedules, structured channel pruning."""
