"""Who you are: passwords, one-time codes, login, sessions, Pro Santé Connect, the OpenID Provider."""
