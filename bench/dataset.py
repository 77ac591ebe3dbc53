"""A deterministic, realistic French dataset for the CRUD benchmark.

Patients carry an INS (identifiant national de santé: the NIR, 13 digits + 2-digit key, under
urn:oid:1.2.250.1.213.1.4.8) and a hospital IPP, accented names (birth name and, for some, a
married name), one or two postal addresses, telecom (mobile, landline, e-mail) and references to a
general practitioner and a managing organisation that the benchmark creates first. A Patient is
about 1.4 kB of JSON, close to what a French EHR exports.
"""

from __future__ import annotations

import random
import unicodedata

INS_NIR_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"
IPP_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.1.2.250.1.999.1"  # a hospital's patient id space (example OID arc)
FR_CORE_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
FINESS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"

FAMILY = [
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
    "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier",
    "Morel", "Girard", "André", "Mercier", "Dupont", "Lambert", "Bonnet", "François", "Martinez", "Légaré",
    "Côté", "Hébert", "Leclère", "Ménard", "Pâris", "Bégin", "Thébault", "Gérard", "Noël", "Rémy",
    "Lécuyer", "Brûlé", "Chrétien", "Désiré", "Éluard", "Guérin", "Hélias", "Jérôme", "Lefèbvre", "Mélançon",
    "Péron", "Sénéchal", "Vérité", "Baptiste-Gaël", "Le Bihan", "Le Gall", "de La Fontaine", "N'Diaye",
    "Ørsted", "Garçon",
]
GIVEN_F = [
    "Émilie", "Hélène", "Chloé", "Léa", "Zoé", "Inès", "Maëlle", "Anaïs", "Céline", "Amélie", "Françoise",
    "Noémie", "Agnès", "Clémence", "Joséphine", "Mégane", "Élodie", "Gaëlle", "Léonie", "Bérénice",
    "Marie-Hélène", "Anne-Sophie", "Renée", "Sévérine", "Thérèse",
]
GIVEN_M = [
    "Jérôme", "François", "Gaël", "Noël", "Loïc", "Théo", "Raphaël", "Mathéo", "Benoît", "Clément", "Hervé",
    "Jérémy", "Léo", "Anaël", "Joël", "Stéphane", "Frédéric", "Rémi", "Cédric", "Aurélien", "Jean-René",
    "Pierre-Étienne", "André", "Aimé", "Honoré",
]
# (city, postal code, INSEE department used in the NIR, INSEE commune number in that department)
CITIES = [
    ("Paris", "75011", "75", "111"), ("Lyon", "69004", "69", "384"), ("Marseille", "13005", "13", "205"),
    ("Besançon", "25000", "25", "056"), ("Orléans", "45000", "45", "234"), ("Nîmes", "30000", "30", "189"),
    ("Saint-Étienne", "42000", "42", "218"), ("Créteil", "94000", "94", "028"), ("Évry-Courcouronnes", "91000", "91", "228"),
    ("Angoulême", "16000", "16", "015"), ("Fréjus", "83600", "83", "061"), ("Nancy", "54000", "54", "395"),
    ("Rennes", "35000", "35", "238"), ("Brest", "29200", "29", "019"), ("Lille", "59000", "59", "350"),
    ("Bordeaux", "33000", "33", "063"), ("Toulouse", "31000", "31", "555"), ("Nantes", "44000", "44", "109"),
    ("Châlons-en-Champagne", "51000", "51", "108"), ("Mâcon", "71000", "71", "270"), ("Sète", "34200", "34", "301"),
    ("Agen", "47000", "47", "001"), ("Périgueux", "24000", "24", "322"), ("Quimper", "29000", "29", "232"),
]
STREETS = [
    "rue de la République", "avenue Jean-Jaurès", "boulevard Gambetta", "place de l'Église",
    "rue du Général-de-Gaulle", "chemin des Écoliers", "allée des Châtaigniers", "impasse de la Forêt",
    "rue Émile-Zola", "quai de la Saône", "rue des Prés", "avenue de l'Hôpital", "rue Pasteur",
    "rue Victor-Hugo", "place du Marché", "rue de l'Abbé-Grégoire", "cours Lafayette", "rue Sainte-Thérèse",
    "boulevard Hélène-Boucher", "rue des Frères-Lumière",
]
COMPLEMENTS = ["Bâtiment B, 3e étage", "Résidence Les Érables", "Appartement 12", "Escalier C", "Chez Mme Bérard"]


def ascii_fold(text: str) -> str:
    nfkd = unicodedata.normalize("NFKD", text)
    return "".join(c for c in nfkd if not unicodedata.combining(c) and c.isascii())


def nir(rng: random.Random, sex: int, year: int, month: int, dept: str, commune: str) -> str:
    """A syntactically valid NIR: 13 digits and the key 97 - (number mod 97)."""
    body = f"{sex}{year % 100:02d}{month:02d}{dept}{commune}{rng.randint(1, 999):03d}"
    return body + f"{97 - int(body) % 97:02d}"


def mobile(rng: random.Random) -> str:
    return f"+33 {rng.choice('67')} " + " ".join(f"{rng.randint(0, 99):02d}" for _ in range(4))


def landline(rng: random.Random) -> str:
    return f"+33 {rng.randint(1, 5)} " + " ".join(f"{rng.randint(0, 99):02d}" for _ in range(4))


def address(rng: random.Random, use: str = "home") -> dict:
    city, postal, _, _ = rng.choice(CITIES)
    lines = [f"{rng.randint(1, 180)}{rng.choice(['', '', '', ' bis', ' ter'])} {rng.choice(STREETS)}"]
    if rng.random() < 0.35:
        lines.append(rng.choice(COMPLEMENTS))
    return {"use": use, "type": "physical", "line": lines, "city": city, "postalCode": postal, "country": "FRA"}


def organizations(n: int = 5, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        city, postal, _, _ = CITIES[i % len(CITIES)]
        out.append({
            "resourceType": "Organization",
            "identifier": [{"system": FINESS_SYSTEM, "value": f"{rng.randint(10, 95)}0{rng.randint(100000, 999999)}"}],
            "active": True,
            "name": f"Centre de santé {rng.choice(['Sainte-Thérèse', 'Émile-Roux', 'Léon-Bérard', 'Pasteur'])} de {city}",
            "telecom": [{"system": "phone", "value": landline(rng), "use": "work"}],
            "address": [{"use": "work", "line": [f"{rng.randint(1, 90)} {rng.choice(STREETS)}"], "city": city,
                         "postalCode": postal, "country": "FRA"}],
        })
    return out


def practitioners(n: int = 20, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        female = rng.random() < 0.5
        given = rng.choice(GIVEN_F if female else GIVEN_M)
        family = rng.choice(FAMILY)
        out.append({
            "resourceType": "Practitioner",
            "identifier": [{"system": RPPS_SYSTEM, "value": f"10{rng.randint(100000000, 999999999)}"}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Dr"]}],
            "telecom": [{"system": "email", "value": f"{ascii_fold(given).lower()}.{ascii_fold(family).lower().replace(' ', '')}@mssante.example.fr", "use": "work"}],
            "gender": "female" if female else "male",
        })
    return out


def patient(rng: random.Random, gp_ids: list[str], org_ids: list[str]) -> dict:
    female = rng.random() < 0.52
    sex = 2 if female else 1
    given = [rng.choice(GIVEN_F if female else GIVEN_M)]
    if rng.random() < 0.5:
        given.append(rng.choice(GIVEN_F if female else GIVEN_M))
    family = rng.choice(FAMILY)
    year, month, day = rng.randint(1930, 2023), rng.randint(1, 12), rng.randint(1, 28)
    _, _, dept, commune = birth = rng.choice(CITIES)
    ins = nir(rng, sex, year, month, dept, commune)
    names = [{"use": "official", "family": family, "given": given}]
    if female and year < 2000 and rng.random() < 0.4:
        names.append({"use": "usual", "family": rng.choice(FAMILY), "given": given[:1]})
    email_name = f"{ascii_fold(given[0]).lower()}.{ascii_fold(names[-1]['family']).lower()}".replace(" ", "").replace("'", "")
    telecom = [{"system": "phone", "value": mobile(rng), "use": "mobile"}]
    if rng.random() < 0.4:
        telecom.append({"system": "phone", "value": landline(rng), "use": "home"})
    telecom.append({"system": "email", "value": f"{email_name}{rng.randint(1, 99)}@example.org", "use": "home"})
    addresses = [address(rng)]
    if rng.random() < 0.15:
        addresses.append(address(rng, "temp"))
    return {
        "resourceType": "Patient",
        "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-ins"]},
        "identifier": [
            {"use": "official",
             "type": {"coding": [{"system": FR_CORE_0203, "code": "INS-NIR", "display": "NIR définitif"}]},
             "system": INS_NIR_SYSTEM, "value": ins},
            {"use": "usual", "type": {"coding": [{"system": V2_0203, "code": "PI", "display": "Patient internal identifier"}]},
             "system": IPP_SYSTEM, "value": f"IPP{rng.randint(10000000, 99999999)}"},
        ],
        "active": True,
        "name": names,
        "telecom": telecom,
        "gender": "female" if female else "male",
        "birthDate": f"{year:04d}-{month:02d}-{day:02d}",
        "address": addresses,
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"city": birth[0], "postalCode": birth[1], "country": "FRA"}}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "fr-FR",
                                                    "display": "Français (France)"}]}, "preferred": True}],
        "generalPractitioner": [{"reference": f"Practitioner/{rng.choice(gp_ids)}"}],
        "managingOrganization": {"reference": f"Organization/{rng.choice(org_ids)}"},
    }


def patients(n: int, gp_ids: list[str], org_ids: list[str], seed: int = 2024) -> list[dict]:
    rng = random.Random(seed)
    return [patient(rng, gp_ids, org_ids) for _ in range(n)]


def updated(resource: dict, rid: str, rng: random.Random) -> dict:
    """The same patient as an update would send it: with its id, a new mobile number and address."""
    out = dict(resource, id=rid)
    out.pop("meta", None)
    out["telecom"] = [dict(out["telecom"][0], value=mobile(rng))] + out["telecom"][1:]
    out["address"] = [address(rng)] + out["address"][1:]
    return out
