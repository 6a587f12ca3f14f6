"""Tools that read what the device layers wrote (captures), above every protocol layer."""
