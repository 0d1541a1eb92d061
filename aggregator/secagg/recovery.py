"""Unmasking, as plain functions over the round's facts: which contributors the pairwise
masks link together, what to ask each for, and rebuilding one secret from its shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge_client.shared.secagg.errors import RoundAborted
from edge_client.shared.secagg.messages import UnmaskRequest, UnmaskResponse
from edge_client.shared.secagg.phases import Phase
from edge_client.shared.secagg.shamir import combine_shares


def mask_groups(masked_with: dict[str, set[str]], contributors: set[str]) -> int:
    """Connected groups of contributors, linked by the pairwise masks between them.
    Masks only cancel within a group, so each group's sum could be unmasked alone."""
    unseen, groups = set(contributors), 0
    while unseen:
        groups += 1
        frontier = [unseen.pop()]
        while frontier:
            linked = masked_with[frontier.pop()] & unseen
            unseen -= linked
            frontier.extend(linked)
    return groups


def need_one_group(masked_with: dict[str, set[str]], contributors: set[str]) -> None:
    """Abort rather than unmask several groups: that would reveal each group's sum."""
    groups = mask_groups(masked_with, contributors)
    if groups > 1:
        raise RoundAborted(Phase.MASKED_INPUT.value, f"the contributors' pairwise masks "
                           f"link them in {groups} separate groups: unmasking would "
                           "reveal the sum of each group, not only the total")


def unmask_requests(round_id: str, masked_with: dict[str, set[str]], contributors: set[str],
                    dropped: set[str]) -> dict[str, UnmaskRequest]:
    """Ask each contributor for its shares of the survivors' seeds (itself included) and
    of the dropped neighbours' masking keys, never both for one device."""
    return {u: UnmaskRequest(round_id=round_id, device_id=u,
                             survivors=tuple(sorted((masked_with[u] & contributors) | {u})),
                             dropped=tuple(sorted(masked_with[u] & dropped)))
            for u in sorted(contributors)}


def recover_secret(holders: Sequence[str], threshold: int, owner: str, what: str,
                   responses: dict[str, UnmaskResponse],
                   pick: Callable[[UnmaskResponse], tuple], valid: Callable[[bytes], bool]
                   ) -> tuple[bytes, str | None]:
    """Rebuild `owner`'s secret from its holders' shares (share x of `holders[x - 1]`) and
    check it; with one wrong share among threshold + 1, leave each out in turn. Returns
    the secret and the holder whose share was wrong, if one was."""
    position = {holder: i + 1 for i, holder in enumerate(holders)}
    shares = [(position[h], h, s.share) for h in sorted(responses)
              for s in pick(responses[h]) if s.owner == owner]
    t = threshold
    if len(shares) < t:
        raise RoundAborted(Phase.UNMASKING.value, f"the {what} of {owner!r} cannot be "
                           f"rebuilt: {len(shares)} shares arrived, {t} needed")
    secret = combine_shares([(x, s) for x, _, s in shares[:t]])
    if valid(secret):
        return secret, None
    for left_out in range(t + 1 if len(shares) > t else 0):
        subset = shares[:left_out] + shares[left_out + 1:t + 1]
        secret = combine_shares([(x, s) for x, _, s in subset])
        if valid(secret):
            return secret, shares[left_out][1]
    raise RoundAborted(Phase.UNMASKING.value, f"the shares of the {what} of {owner!r} do "
                       "not rebuild it: at least one share is wrong")
