from identity.models import User


def test_signup_creates_user(gql) -> None:
    body = gql(
        """mutation { signup(input: {email: "New@Example.com", password: "correct horse 9",
        accountName: "Acme"}) { __typename ... on AuthPayload { token user { email } } } }"""
    )
    assert body["data"]["signup"]["user"]["email"] == "new@example.com"
    assert User.objects.count() == 1
