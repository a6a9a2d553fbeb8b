"""Small, fixed vocabularies for plausible profiles (a few non-ASCII names on purpose: UTF-8)."""

from __future__ import annotations

FIRST_NAMES_F: tuple[str, ...] = (
    "Olivia", "Emma", "Ava", "Sophia", "Isabella", "Mia", "Amelia", "Harper", "Evelyn", "Abigail",
    "Emily", "Elizabeth", "Sofia", "Avery", "Ella", "Scarlett", "Grace", "Chloe", "Zoë", "Renée",
    "Maya", "Nora", "Lucía", "Hannah", "Aaliyah", "Priya", "Mei", "Fatima", "Ingrid", "Camille",
)  # fmt: skip

FIRST_NAMES_M: tuple[str, ...] = (
    "Liam", "Noah", "Oliver", "Elijah", "James", "William", "Benjamin", "Lucas", "Henry", "Theodore",
    "Jack", "Levi", "Alexander", "Jackson", "Mateo", "Daniel", "Michael", "Mason", "Sebastián", "José",
    "Ethan", "Logan", "Owen", "Samuel", "Jacob", "Arjun", "Wei", "Omar", "Björn", "Kenji",
)  # fmt: skip

LAST_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Nguyen", "Hill",
    "O'Brien", "Müller", "Núñez", "Patel", "Kim", "Chen", "Okafor", "Kowalski", "Rossi", "Dubois",
)  # fmt: skip

STREET_NAMES: tuple[str, ...] = (
    "Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Washington Blvd",
    "Lakeview Rd", "Hillcrest Ave", "Sunset Blvd", "Park Pl", "River Rd", "Highland Ave",
    "Church St", "Spring St", "Franklin Ave", "Lincoln Way", "Jefferson St", "Mill Rd", "Forest Dr",
)  # fmt: skip

# (city, state, lowest zip of the city): some zips have leading zeros (New England, New Jersey).
CITIES: tuple[tuple[str, str, int], ...] = (
    ("Boston", "MA", 2108),
    ("Cambridge", "MA", 2138),
    ("Providence", "RI", 2903),
    ("Hartford", "CT", 6103),
    ("Newark", "NJ", 7102),
    ("New York", "NY", 10001),
    ("Philadelphia", "PA", 19102),
    ("Baltimore", "MD", 21201),
    ("Atlanta", "GA", 30303),
    ("Miami", "FL", 33130),
    ("Chicago", "IL", 60601),
    ("Minneapolis", "MN", 55401),
    ("Denver", "CO", 80202),
    ("Austin", "TX", 78701),
    ("Houston", "TX", 77002),
    ("Phoenix", "AZ", 85003),
    ("Seattle", "WA", 98101),
    ("Portland", "OR", 97201),
    ("San Francisco", "CA", 94102),
    ("Los Angeles", "CA", 90012),
)
