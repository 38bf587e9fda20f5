from ... import helpers


def deeper():
    return helpers.shout("deep")
