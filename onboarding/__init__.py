"""How you get in: account creation, captcha, approval, access requests and the referentials."""
