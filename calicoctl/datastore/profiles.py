"""Profiles: /calico/v1/policy/profile/<name>/{tags,rules}."""

import json

from calicoctl.datastore import keys
from calicoctl.datastore.rules import Rules, validate_name
from calicoctl.datastore.store import dump_json
from calicoctl.errors import AlreadyExistsError, NotFoundError, ValidationError


def profile_exists(store, name):
    return store.read(keys.profile_dir(name)) is not None


def list_profiles(store):
    return sorted(name for name, is_dir in store.list_dir(keys.PROFILES_DIR) if is_dir)


def create_profile(store, name, exist_ok=False):
    """A new profile: tag = its own name, inbound from that tag, all outbound."""
    validate_name(name, "profile")
    created = store.create(keys.profile_tags(name), json.dumps([name]))
    if not created:
        if exist_ok:
            return False
        raise AlreadyExistsError("Profile %s already exists." % name)
    store.create(keys.profile_rules(name), dump_json(Rules.default(name).to_json()))
    return True


def remove_profile(store, name):
    if not store.delete(keys.profile_dir(name), recursive=True):
        raise NotFoundError("Profile %s does not exist." % name)


def _require(store, name):
    if not profile_exists(store, name):
        raise NotFoundError("Profile %s does not exist; create it with "
                            "'calicoctl profile add %s'." % (name, name))


def get_tags(store, name):
    # One read when the profile exists (a command is mostly start-up and round trips).
    value = store.get(keys.profile_tags(name))
    if value is None:
        _require(store, name)
    return json.loads(value or "[]")


def update_tags(store, name, mutate):
    """Compare-and-swap edit of the tag list; mutate(list) -> list."""
    _require(store, name)

    def apply(old):
        return json.dumps(mutate(json.loads(old or "[]")))
    return json.loads(store.update(keys.profile_tags(name), apply))


def get_rules(store, name):
    value = store.get(keys.profile_rules(name))
    if value is None:
        _require(store, name)      # only now: one read when the profile exists
        return Rules(name)
    return Rules.from_json(name, json.loads(value), strict=False)


def update_rules(store, name, mutate):
    """Compare-and-swap edit of the rules; mutate(Rules) -> Rules (may raise to abort)."""
    _require(store, name)

    def apply(old):
        rules = Rules.from_json(name, json.loads(old)) if old else Rules(name)
        return dump_json(mutate(rules).to_json())
    return Rules.from_json(name, json.loads(store.update(keys.profile_rules(name), apply)))


def set_rules(store, name, rules):
    _require(store, name)
    if rules.profile != name:
        raise ValidationError("The rules' id %r does not match profile %s." % (rules.profile, name))
    store.set(keys.profile_rules(name), dump_json(rules.to_json()))
