"""Placeholder: this method module is being written."""
