"""placeholder until the loss bindings land"""
